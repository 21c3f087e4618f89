"""Predicted labels as files, as the task makes them (:mod:`segdense.tasks`).

- multiclass and binary: ``<name>.png``, an 8-bit palette PNG whose pixel values are the class indices (binary: 0
  background, 1 foreground, the values of a training mask), shown in the classes' colours by any viewer;
- multilabel, ``multilabel_format=tiff`` (default): ``<name>.tif``, one zlib-compressed uint8 TIFF of shape
  (H, W, C) with one 0/1 band per class, the layout the folder dataset reads as a multilabel mask;
- multilabel, ``multilabel_format=png``: ``<name>_<class>.png`` per class, a 0/1 palette PNG each (class colour on
  black).
"""
from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np

from segdense.errors import ConfigError
from segdense.tasks import Task

from .writers import label_png_bytes

MULTILABEL_FORMATS = ("tiff", "png")


def class_file_name(name: str) -> str:
    """A class name as a file-name part (letters, digits, ``-``, ``_`` and ``.``; anything else ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def multilabel_tiff_bytes(labels: np.ndarray) -> bytes:
    """(C, H, W) 0/1 labels as a compressed (H, W, C) uint8 TIFF."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(np.moveaxis(labels.astype(np.uint8), 0, -1)),
                     photometric="minisblack", planarconfig="contig", compression="zlib")
    return buffer.getvalue()


class LabelFiles:
    """The label file(s) of one prediction: :attr:`suffixes` to add to an output stem, :meth:`encode` for their
    bytes in the same order."""

    def __init__(self, task: Task, palette: Sequence[Sequence[int]], multilabel_format: str = "tiff"):
        if multilabel_format not in MULTILABEL_FORMATS:
            raise ConfigError(f"multilabel_format must be one of {', '.join(MULTILABEL_FORMATS)}, "
                              f"got {multilabel_format!r}")
        self.task, self.palette, self.format = task, [list(c) for c in palette], multilabel_format
        self.per_band = task.target_dims == 4  # labels (C, H, W), one band per class
        self.suffixes = self._suffixes()

    def _suffixes(self) -> list[str]:
        if not self.per_band:
            return [".png"]
        if self.format == "tiff":
            return [".tif"]
        parts = [class_file_name(name) for name in self.task.class_names]
        if len(set(parts)) != len(parts):
            raise ConfigError(f"class names {self.task.class_names} give the same file name part twice "
                              f"({parts}); use multilabel_format=tiff")
        return [f"_{part}.png" for part in parts]

    def encode(self, labels: np.ndarray) -> list[bytes]:
        """The files' bytes for ``labels``: (H, W) class indices or (C, H, W) 0/1 labels."""
        if not self.per_band:
            return [label_png_bytes(labels, self.palette)]
        if self.format == "tiff":
            return [multilabel_tiff_bytes(labels)]
        return [label_png_bytes(band, [[0, 0, 0], colour]) for band, colour in zip(labels, self.palette)]
