"""Multilabel masks: one 0/1 band per class, 255 where a class is not labelled (ignored).

A mask is a C-band TIFF or ``.npy`` array, laid out (H, W, C) or (C, H, W) (told apart by which axis has the C
bands; a shape where both do is refused, never guessed), or one single-channel PNG per class. Read with tifffile
and numpy directly in one function, :func:`read_multilabel_mask`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .io import IGNORE_INDEX, DatasetFileError, read_mask

ARRAY_SUFFIXES = (".tif", ".tiff", ".npy")


def read_multilabel_mask(source: str | Path | Sequence[str | Path], num_classes: int) -> np.ndarray:
    """An ``int64`` (H, W, C) mask of 0, 1 and 255 from one TIFF/``.npy`` file with ``num_classes`` bands, or from
    one PNG per class (in class order). One :class:`~segdense.data.io.DatasetFileError` naming the file and the
    numbers when the band count or a value does not fit."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        array = _read_array(path)
        bands = _bands_last(array, num_classes, path)
    else:
        paths = [Path(p) for p in source]
        if len(paths) != num_classes:
            raise DatasetFileError(paths[0].parent if paths else "", f"{len(paths)} class PNG(s) for {num_classes} "
                                   "classes")
        planes = [read_mask(p) for p in paths]
        if len({p.shape for p in planes}) > 1:
            raise DatasetFileError(paths[0], f"the class PNGs differ in size: {[p.shape for p in planes]}")
        bands, path = np.stack(planes, axis=-1), paths[0]
    return check_multilabel_values(bands, path)


def check_multilabel_values(bands: np.ndarray, source: str | Path) -> np.ndarray:
    """``bands`` as ``int64``, after checking every value is 0, 1 or 255 (one error naming ``source`` if not)."""
    values = np.unique(bands)
    bad = values[~np.isin(values, (0, 1, IGNORE_INDEX))]
    if bad.size:
        raise DatasetFileError(source, f"multilabel mask holds values {bad[:10].tolist()}; expected 0, 1 and "
                               f"{IGNORE_INDEX} (ignore)")
    return bands.astype(np.int64)


def _read_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import tifffile

        return tifffile.imread(path)
    except (OSError, ValueError) as exc:
        raise DatasetFileError(path, f"cannot be read as a multilabel mask ({type(exc).__name__}: {exc})") from None


def _bands_last(array: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    if array.ndim == 2 and num_classes == 1:
        return array[..., None]
    last = array.ndim == 3 and array.shape[-1] == num_classes
    first = array.ndim == 3 and array.shape[0] == num_classes
    if last == first:  # both (ambiguous) or neither
        why = "both its first and last axes" if last else "neither its first nor its last axis"
        raise DatasetFileError(path, f"multilabel mask of shape {tuple(array.shape)}: {why} could hold the "
                               f"{num_classes} class bands; expected (H, W, {num_classes}) or ({num_classes}, H, W)")
    return array if last else np.moveaxis(array, 0, -1)
