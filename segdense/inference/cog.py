"""A scene's output as a Cloud-Optimized GeoTIFF (rasterio, the ``[geo]`` extra): the finished tiled TIFF gets the
input's CRS and transform, then GDAL's COG driver copies it with overviews. GDAL's block cache is capped so the
copy, like the prediction, holds a few tiles at a time whatever the scene's size."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

GDAL_CACHE_MB = 64


def write_cog(tiled: Path, target: Path, crs: Any, transform: Any, tile: int, resampling: str) -> None:
    """Write ``target``, the Cloud-Optimized copy of the tiled TIFF ``tiled`` placed by ``crs`` and ``transform``,
    its overviews made with ``resampling`` (``NEAREST`` for class indices, ``AVERAGE`` for probabilities)."""
    import rasterio
    from rasterio.shutil import copy

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # not yet: it is being placed
        with rasterio.open(tiled, "r+") as dataset:
            dataset.crs, dataset.transform = crs, transform
        copy(tiled, target, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=tile, RESAMPLING=resampling,
             BIGTIFF="IF_SAFER")
