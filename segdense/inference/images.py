"""Reading any image a user hands to inference as RGB ``uint8`` (H, W, 3).

Files: whatever Pillow decodes (PNG, JPEG, BMP, TIFF, WebP, ...), with EXIF orientation applied (a damaged EXIF
block is logged as a warning naming the file), in any mode: 8- or 16-bit greyscale, RGB, RGBA (alpha dropped),
palette, CMYK, 1-bit. 16-bit data is scaled by 255/65535. Files Pillow cannot decode (e.g. 16-bit colour TIFF) are
tried with OpenCV before giving up.
Arrays: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16 (0..65535), other integers holding
0..255 or 0..65535, bool, or float in [0, 1]. Anything else (negative values, floats above 1 such as an
ImageNet-normalised array) is refused, never clipped.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from segdense.errors import MissingFileError, UserError

logger = logging.getLogger("segdense.infer")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(UserError, ValueError):
    """An image could not be read; ``source`` names it."""

    def __init__(self, source: Any, problem: str):
        self.source = str(source)
        super().__init__(f"{self.source}: {problem}")


def load_image(source: Any) -> np.ndarray:
    """A path, PIL image or numpy array as an RGB ``uint8`` array (H, W, 3)."""
    from PIL import Image

    if isinstance(source, (str, Path)):
        return _read_file(Path(source))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(_exif_upright(source, "PIL image"), source)
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    try:  # torch tensors and other array-likes
        return array_to_rgb(np.asarray(source))
    except Exception:
        raise ImageReadError(type(source).__name__, "expected a file path, a PIL image or a numpy array") from None


def _read_file(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_rgb(_exif_upright(image, path), path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        pil_error = exc
    rgb = _read_with_opencv(path) if path.suffix.lower() in (".tif", ".tiff") else None  # e.g. 16-bit colour TIFF
    if rgb is None:
        raise ImageReadError(path, f"cannot be decoded as an image ({pil_error.__class__.__name__}: {pil_error})")
    return rgb


def _exif_upright(image, source: Any):
    """``image`` turned as its EXIF orientation says. A damaged EXIF block (Pillow raises, warns, or finds no
    entries in it) does not make a readable image unreadable, but the orientation may be lost: warn, naming
    ``source``."""
    from PIL import ImageOps

    upright, problem, orientation = image, "", 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            upright = ImageOps.exif_transpose(image)
            exif = image.getexif()
            orientation = exif.get(0x0112, 1)
            if image.info.get("exif") and not len(exif):
                problem = "it holds no readable entries"
        except Exception as e:
            upright, problem = image, f"{type(e).__name__}: {e}"
    problem = "; ".join([str(w.message).strip() for w in caught] + ([problem] if problem else []))
    if problem:
        turned = (f"it was turned as its orientation tag ({orientation}) says" if upright is not image
                  and orientation != 1 else "the image is used as stored, without any EXIF rotation")
        logger.warning("%s: its EXIF block is damaged (%s); %s", source, problem, turned)
    return upright


def _pil_to_rgb(image, source) -> np.ndarray:
    mode = image.mode
    if mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "La", "RGBa", "RGBX"):
        if mode in ("P", "PA"):  # palette images may carry transparency: go through RGBA
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    # 16/32-bit integer and float greyscale ("I;16", "I;16B", "I", "F"): scale the values, don't clip them.
    # Integer files are 16-bit data (Pillow may open a 16-bit PNG as "I"), however dark the image.
    return array_to_rgb(np.asarray(image), source=source, wide_ints_are_16_bit=True)


def array_to_rgb(array: np.ndarray, source: Any = "array", wide_ints_are_16_bit: bool = False) -> np.ndarray:
    """An image array of a supported shape and dtype as RGB uint8 (H, W, 3). uint16 is scaled by 255/65535;
    wider integers too, unless they all lie in 0..255 (e.g. ``np.array`` of 8-bit values) and
    ``wide_ints_are_16_bit`` is False; floats must lie in [0, 1]. Negative values, integers above 65535 and
    floats outside [0, 1] raise :class:`ImageReadError` instead of being clipped."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or min(a.shape[:2]) < 1:
        raise ImageReadError(
            source, f"array of shape {tuple(np.shape(array))} is not an image; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    a = _to_uint8(a, source, wide_ints_are_16_bit)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray, source: Any, wide_ints_are_16_bit: bool = False) -> np.ndarray:
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
        if low < 0 or high > 65535:
            raise ImageReadError(source, f"{a.dtype} image values lie in {low}..{high}; expected 0..255 (8-bit) "
                                 "or 0..65535 (16-bit)")
        if a.dtype.itemsize == 1:  # int8 holding 0..127
            return a.astype(np.uint8)
        if a.dtype.itemsize > 2 and not wide_ints_are_16_bit:  # e.g. np.array of Python ints: 8-bit unless above 255
            if high <= 255:
                return a.astype(np.uint8)
            logger.warning("%s: %s image values reach %d, above 255: read as 16-bit data (scaled by 255/65535)",
                           source, a.dtype, high)
        return np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    raise ImageReadError(source, f"unsupported pixel type {a.dtype}")


def _read_with_opencv(path: Path) -> np.ndarray | None:
    try:
        import cv2
    except ImportError:
        return None
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if data is None:
        return None
    if data.ndim == 3 and data.shape[-1] >= 3:  # OpenCV is BGR(A)
        data = data[..., [2, 1, 0]]
    try:
        return array_to_rgb(data, source=path)
    except ImageReadError:
        return None


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
