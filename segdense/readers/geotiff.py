"""GeoTIFF through rasterio (``pip install segdense[geo]``): the bands as (H, W, C), with the CRS, the affine
transform and the nodata value in the metadata, so outputs can be written in the same place on Earth."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metadata import ImageMetadata, ImageReadError


def available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def read(path: Path) -> tuple[np.ndarray, ImageMetadata]:
    import rasterio

    try:
        with rasterio.open(path) as src:
            array = src.read()  # (C, H, W): rasterio always reads band-first
            meta = ImageMetadata(str(path), "geotiff", "CHW", "file", crs=src.crs, transform=src.transform,
                                 nodata=src.nodata)
    except rasterio.errors.RasterioError as exc:
        raise ImageReadError(path, f"cannot be read as a GeoTIFF ({exc})") from None
    return np.ascontiguousarray(np.moveaxis(array, 0, -1)), meta


def georeference(path: Path) -> tuple[Any, Any] | None:
    """The (CRS, affine transform) of a GeoTIFF without reading its pixels; None when it holds neither."""
    import rasterio
    from rasterio.transform import Affine

    try:
        with rasterio.open(path) as src:
            crs, transform = src.crs, src.transform
    except rasterio.errors.RasterioError as exc:
        raise ImageReadError(path, f"cannot be read as a GeoTIFF ({exc})") from None
    return None if crs is None and transform == Affine.identity() else (crs, transform)
