"""Reading images of any band count and bit depth: ``read_image(path) -> (array (H, W, C) in its own dtype,
metadata)``, one small module per format, chosen by the file's content (its magic bytes), else its extension.

Nothing here converts or scales values: normalisation to float happens once, in the transform pipeline
(:mod:`segdense.data.normalisation`), from the dataset's configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import geotiff, npy, pil, tiff
from .metadata import LAYOUTS, ImageMetadata, ImageReadError, to_hwc

IMAGE_EXTENSIONS = pil.EXTENSIONS + tiff.EXTENSIONS + npy.EXTENSIONS
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_NPY_MAGIC = b"\x93NUMPY"

__all__ = ["IMAGE_EXTENSIONS", "LAYOUTS", "ImageMetadata", "ImageReadError", "format_of", "georeference",
           "read_image", "select_bands", "to_hwc"]


def format_of(path: Path) -> str:
    """``tiff``, ``geotiff`` (a TIFF with GeoKeys, when rasterio is installed), ``npy`` or ``pil``."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head[:4] in _TIFF_MAGIC:
        return "geotiff" if geotiff.available() and _has_geokeys(path) else "tiff"
    if path.suffix.lower() in npy.EXTENSIONS:
        return "npy"
    return "pil"


def _has_geokeys(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages[0].is_geotiff)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return False


def read_image(path: str | Path, layout: str | None = None,
               upright: bool = False) -> tuple[np.ndarray, ImageMetadata]:
    """The image in ``path`` as (H, W, C) in the file's own dtype, and its :class:`ImageMetadata`.

    ``layout`` (``HW``, ``HWC`` or ``CHW``) declares how a TIFF or ``.npy`` array is laid out where the file does
    not say and the shape leaves it open; ``upright`` applies a JPEG's EXIF orientation (prediction only)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    kind = format_of(path)
    if kind == "npy":
        return npy.read(path, layout)
    if kind == "geotiff":
        return geotiff.read(path)
    if kind == "tiff":
        return tiff.read(path, layout)
    return pil.read(path, upright=upright)


def georeference(path: str | Path) -> tuple[Any, Any] | None:
    """A GeoTIFF's (CRS, affine transform), read with rasterio without its pixels; None for any other file (and
    for every file when rasterio is not installed)."""
    path = Path(path)
    return geotiff.georeference(path) if format_of(path) == "geotiff" else None


def select_bands(image: np.ndarray, bands: Sequence[int] | None, source: str | Path) -> np.ndarray:
    """The ``bands`` of an (H, W, C) image, in that order (0-based; all of them when None)."""
    if bands is None:
        return image
    wanted = [int(b) for b in bands]
    bad = [b for b in wanted if not 0 <= b < image.shape[2]]
    if not wanted or bad:
        raise ImageReadError(source, f"bands {wanted} asked for, but the image has {image.shape[2]} band(s) "
                             f"(0..{image.shape[2] - 1})")
    return np.ascontiguousarray(image[..., wanted])
