"""``.npy`` arrays: (H, W), (H, W, C) or (C, H, W) in any real dtype; a 3-D array whose shape leaves the band
axis open needs a declared ``layout``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .metadata import ImageMetadata, ImageReadError, to_hwc
from .tiff import check_dtype

EXTENSIONS = (".npy",)


def read(path: Path, layout: str | None = None) -> tuple[np.ndarray, ImageMetadata]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, f"cannot be read as a .npy array ({exc.__class__.__name__}: {exc})") from None
    check_dtype(array, path)
    array, chosen, how = to_hwc(array, path, layout)
    return array, ImageMetadata(str(path), "npy", chosen, how)
