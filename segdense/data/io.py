"""Reading images and label masks from disk.

Masks are read as label *indices*: a palette ("P") PNG gives its indices, a greyscale PNG its values. An RGB
mask is refused unless the caller passes the colour of every class, so reading a VOC palette PNG as colours
(the classic mistake that turns label 1 into 128) cannot happen here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from segdense.errors import UserError
from segdense.readers import IMAGE_EXTENSIONS, ImageReadError, select_bands
from segdense.readers import read_image as read_any_image

IGNORE_INDEX = 255
__all__ = ["IGNORE_INDEX", "IMAGE_EXTENSIONS", "DatasetFileError", "read_image", "read_mask"]
_INDEX_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")


class DatasetFileError(UserError, RuntimeError):
    """A file of a dataset could not be used; ``path`` names it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _open(path: str | Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DatasetFileError(path, "file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        detail = exc.__class__.__name__ if str(path) in str(exc) else f"{exc.__class__.__name__}: {exc}"
        raise DatasetFileError(path, f"cannot be decoded as an image ({detail})") from None
    return image


def read_image(path: str | Path, bands: Sequence[int] | None = None, layout: str | None = None) -> np.ndarray:
    """An image file as (H, W, C) in its own dtype (:func:`segdense.readers.read_image`: 8-bit PNG/JPEG as RGB
    uint8, TIFF and ``.npy`` with all their bands), reduced to ``bands`` (in that order) when given."""
    try:
        return select_bands(read_any_image(path, layout=layout)[0], bands, path)
    except ImageReadError as exc:
        raise DatasetFileError(path, exc.problem) from None


def read_mask(path: str | Path, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """A label mask as an ``int64`` array (H, W) of class indices (255 = ignore).

    Palette and greyscale PNGs are read as indices, never converted to colours. With ``colors`` (the RGB colour of
    class ``i`` at position ``i``) an RGB-coded mask is mapped to indices; colours not listed become 255.
    """
    image = _open(path)
    if colors is not None:
        return rgb_to_index(np.asarray(image.convert("RGB")), colors)
    if image.mode not in _INDEX_MODES:
        raise DatasetFileError(
            path,
            f"mask has colour mode {image.mode!r}; masks must be single-channel or palette ('P') PNGs whose "
            "values are class indices (for RGB-coded masks give the dataset the colour of every class)",
        )
    return np.asarray(image, dtype=np.int64)


def rgb_to_index(rgb: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Map an RGB mask (H, W, 3) to class indices by exact colour; unknown colours become 255."""
    rgb = np.asarray(rgb, dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lut_keys = np.array([(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in colors], dtype=np.int64)
    order = np.argsort(lut_keys)
    sorted_keys = lut_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, codes), 0, len(sorted_keys) - 1)
    found = sorted_keys[pos] == codes
    return np.where(found, order[pos], IGNORE_INDEX).astype(np.int64)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    image = _open(path)
    return image.height, image.width


def write_index_png(path: str | Path, mask: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> None:
    """Write a label mask as an 8-bit PNG, as a palette PNG when ``palette`` is given."""
    mask = np.asarray(mask)
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(f"mask values must lie in [0, 255] to be written as an 8-bit PNG, "
                         f"got {mask.min()}..{mask.max()}")
    image = Image.fromarray(mask.astype(np.uint8))
    if palette is not None:  # putpalette turns the "L" image into a "P" image with the same indices
        flat = [c for color in palette for c in color]
        image.putpalette(flat + [0] * (768 - len(flat)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
