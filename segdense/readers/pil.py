"""PNG, JPEG, BMP, WebP (and anything else Pillow decodes) through Pillow.

8-bit images (greyscale, palette, RGB, RGBA, CMYK...) are read as RGB uint8 (H, W, 3), as pretrained RGB models
expect; images of more than 8 bits per pixel ("I;16", "I", "F") keep their values and dtype as (H, W, 1).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .metadata import ImageMetadata, ImageReadError

logger = logging.getLogger("segdense.readers")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EIGHT_BIT_MODES = ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "La", "RGBa", "RGBX")
_WIDE_DTYPES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32,
                "F": np.float32}

def read(path: Path, upright: bool = False) -> tuple[np.ndarray, ImageMetadata]:
    """The image in ``path``; ``upright`` turns it as its EXIF orientation says (for prediction: a dataset's
    masks are stored unturned, so its images are read unturned too)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if upright:
                image = exif_upright(image, path)
            array = pil_to_array(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot be decoded as an image ({exc.__class__.__name__}: {exc})") from None
    return array, ImageMetadata(str(path), "pil", "HWC", "file")

def pil_to_array(image, source: Any) -> np.ndarray:
    """A PIL image as (H, W, C): 8-bit modes as RGB uint8, wider modes as (H, W, 1) in their own dtype."""
    mode = image.mode
    if mode in _EIGHT_BIT_MODES:
        if mode in ("P", "PA"):  # palette images may carry transparency: go through RGBA
            image = image.convert("RGBA")
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if mode in _WIDE_DTYPES:
        return np.array(image, dtype=_WIDE_DTYPES[mode])[..., None]
    raise ImageReadError(source, f"Pillow image mode {mode!r} is not supported")

def exif_upright(image, source: Any):
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
        logging.getLogger("segdense.infer").warning("%s: its EXIF block is damaged (%s); %s", source, problem,
                                                    turned)
    return upright
