"""Reading any image a user hands to inference.

Files are read by :mod:`segdense.readers`, as training reads them: 8-bit PNG/JPEG/BMP/WebP as RGB uint8, images
of more bits and TIFF/``.npy`` files with their own values, dtype and bands (nothing is scaled to 8 bits), with
EXIF orientation applied (a damaged EXIF block is logged as a warning naming the file).
Arrays for a model that takes 8-bit RGB: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16
(0..65535), other integers holding 0..255 or 0..65535, bool, or float in [0, 1]. Anything else (negative values,
floats above 1 such as an ImageNet-normalised array) is refused, never clipped. A model whose dataset declares its
own normalisation takes arrays as they are, in the file's own units.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segdense.errors import MissingFileError
from segdense.readers import IMAGE_EXTENSIONS, ImageReadError, read_image, select_bands, to_hwc
from segdense.readers.pil import exif_upright, pil_to_array

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "array_to_rgb", "find_images", "load_image"]


def load_image(source: Any, bands: Sequence[int] | None = None, layout: str | None = None,
               rgb_arrays: bool = True) -> np.ndarray:
    """A path, PIL image or numpy array as (H, W, C), reduced to ``bands`` when given.

    Files are read as training reads them (:func:`segdense.readers.read_image`, values and dtype kept), turned
    as their EXIF orientation says. Arrays and PIL images: with ``rgb_arrays`` (a model that takes 8-bit RGB) as
    RGB uint8 (:func:`array_to_rgb`); without, as they are, in the file's own units."""
    from PIL import Image

    if isinstance(source, (str, Path)):
        image = read_image(source, layout=layout, upright=True)[0]
    elif isinstance(source, Image.Image):
        image = pil_to_array(exif_upright(source, "PIL image"), source)
        image = array_to_rgb(image, source) if rgb_arrays else image
    else:
        try:  # numpy arrays, torch tensors and other array-likes
            array = np.asarray(source)
        except Exception:
            raise ImageReadError(type(source).__name__,
                                 "expected a file path, a PIL image or a numpy array") from None
        image = array_to_rgb(array) if rgb_arrays else to_hwc(array, "array", layout)[0]
    return select_bands(image, bands, source if isinstance(source, (str, Path)) else "array")


def array_to_rgb(array: np.ndarray, source: Any = "array") -> np.ndarray:
    """An image array of a supported shape and dtype as RGB uint8 (H, W, 3): integers of any type holding
    0..255, bool, or floats in [0, 1]. Other values (16-bit data above 255, negative values, floats outside
    [0, 1]) raise :class:`ImageReadError` instead of being scaled or clipped."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or min(a.shape[:2]) < 1:
        raise ImageReadError(
            source, f"array of shape {tuple(np.shape(array))} is not an image; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    a = _to_uint8(a, source)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray, source: Any) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageReadError(source, "float image holds NaN or infinite values")
        low, high = float(a.min()), float(a.max())
        if low < 0.0 or high > 1.0:
            raise ImageReadError(
                source, f"float image values lie in {low:.4g}..{high:.4g}; expected [0, 1] (pixel values / 255). "
                "Pass 0..255 data as uint8, and the image before any normalisation (the model normalises it)")
        return np.rint(a * 255.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        low, high = int(a.min()), int(a.max())
        if low < 0 or high > 255:  # never scaled down to 8 bits: that would silently lose the data's precision
            raise ImageReadError(source, f"{a.dtype} image values lie in {low}..{high}; this model takes 8-bit RGB "
                                 "(0..255). For 16-bit or signed data, train with dataset.normalize in the "
                                 "file's own units (docs/data.md)")
        return a.astype(np.uint8)
    raise ImageReadError(source, f"unsupported pixel type {a.dtype}")


def find_images(spec: str | Path) -> list[Path]:
    """Image files named by ``spec``: one file, every image in a directory (recursively), or a glob pattern.
    Sorted; raises MissingFileError (a FileNotFoundError) when nothing matches."""
    import glob

    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise MissingFileError(f"input={spec}: the directory holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if glob.has_magic(str(spec)):
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise MissingFileError(f"input={spec}: the pattern matches no files")
        return files
    raise MissingFileError(f"input={spec}: no such file or directory")
