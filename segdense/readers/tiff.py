"""TIFF through tifffile: uint8, uint16, int16, float32 (any real dtype), any band count, stored as (H, W),
(H, W, C) ("YXS": interleaved samples) or (C, H, W) (planar samples or one page per band) as the file's axes say."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pil
from .metadata import ImageMetadata, ImageReadError, to_hwc

EXTENSIONS = (".tif", ".tiff")
GDAL_NODATA = 42113  # the TIFF tag GDAL writes a band's nodata value in, as text
# Photometric interpretations whose samples are not the picture's values (palette indices, CMYK, YCbCr, CIELAB):
# Pillow converts them to RGB, as it does for the same colour spaces in other formats.
_COLOUR_CODED = {3, 5, 6, 8}


def read(path: Path, layout: str | None = None) -> tuple[np.ndarray, ImageMetadata]:
    """The first image series of the TIFF ``path`` as (H, W, C) in its own dtype."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if int(tif.pages[0].photometric) in _COLOUR_CODED:
                return pil.read(path)
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            nodata = tif.pages[0].tags.get(GDAL_NODATA)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise ImageReadError(path, f"cannot be read as a TIFF ({exc.__class__.__name__}: {exc})") from None
    check_dtype(array, path)
    array, chosen, how = to_hwc(array, path, layout, file_layout(axes, array.ndim))
    value = None if nodata is None else float(str(nodata.value).strip("\x00 "))
    return array, ImageMetadata(str(path), "tiff", chosen, how, nodata=value, extra={"axes": axes})


def file_layout(axes: str, ndim: int) -> str | None:
    """The layout tifffile's axes letters state: Y and X last with one axis before them (samples, channels or
    pages) is (C, H, W); Y, X, then samples is (H, W, C)."""
    if ndim == 2 and axes.endswith("YX"):
        return "HW"
    if ndim == 3 and axes.endswith("YXS"):
        return "HWC"
    if ndim == 3 and axes.endswith("YX"):
        return "CHW"
    return None


def check_dtype(array: np.ndarray, source) -> None:
    """Refuse pixel types that are not real numbers (complex, bool packed as objects...)."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(source, f"pixel type {array.dtype} is not supported; expected integers or floats")
