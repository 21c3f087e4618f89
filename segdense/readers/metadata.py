"""What every reader returns beside the pixels, the one error type of reading, and the band-axis rule."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segdense.errors import UserError

LAYOUTS = ("HW", "HWC", "CHW")


class ImageReadError(UserError, ValueError):
    """An image could not be read; ``source`` names it."""

    def __init__(self, source: Any, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


@dataclass
class ImageMetadata:
    """Where an (H, W, C) array came from: the file, its format, the layout it was stored in and how that was
    known, and for a GeoTIFF its ``crs``, affine ``transform`` and ``nodata`` value (None elsewhere)."""

    path: str
    format: str
    layout: str
    layout_source: str  # "declared", "file" (the format says), or "shape" (unambiguous from the shape)
    crs: Any = None
    transform: Any = None
    nodata: float | None = None
    extra: dict = field(default_factory=dict)


def to_hwc(array: np.ndarray, source: str | Path, layout: str | None = None,
           file_layout: str | None = None) -> tuple[np.ndarray, str, str]:
    """``array`` as (H, W, C) with the layout it had and how that is known: the ``layout`` the user declared,
    else the one the file states (``file_layout``), else the shape when it leaves one answer (a 2-D array, or a
    3-D one whose first or last axis, and only one of them, is shorter than the other two). Any other shape is
    one error asking for a declared ``layout``; a declared layout that does not fit the array is one error."""
    if layout is not None and layout not in LAYOUTS:
        raise ImageReadError(source, f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    chosen, how = (layout, "declared") if layout else (file_layout, "file") if file_layout else (None, "shape")
    if chosen is None:
        chosen = _layout_from_shape(array.shape, source)
    if len(chosen) != array.ndim:
        raise ImageReadError(source, f"array of shape {array.shape} does not have the {how} layout {chosen} "
                             f"({len(chosen)} axes); expected one of {', '.join(LAYOUTS)} matching its axes")
    if chosen == "HW":
        array = array[..., None]
    elif chosen == "CHW":
        array = np.moveaxis(array, 0, -1)
    if min(array.shape[:2]) < 1 or array.shape[2] < 1:
        raise ImageReadError(source, f"array of shape {array.shape} holds no pixels")
    return np.ascontiguousarray(array), chosen, how


def _layout_from_shape(shape: tuple[int, ...], source) -> str:
    if len(shape) == 2:
        return "HW"
    if len(shape) != 3:
        raise ImageReadError(source, f"array of shape {shape} is not an image; expected (H, W), (H, W, C) or "
                             "(C, H, W)")
    first_is_bands = shape[0] < min(shape[1], shape[2])
    last_is_bands = shape[2] < min(shape[0], shape[1])
    if first_is_bands != last_is_bands:
        return "CHW" if first_is_bands else "HWC"
    raise ImageReadError(source, f"array of shape {shape}: cannot tell which axis holds the bands; declare the "
                         "layout (dataset.layout=HWC or CHW)")
