"""Streamed prediction on a scene larger than memory: the slide inference of :class:`SlideInference` (same windows,
same blending, same order of additions, so the same numbers) computed one strip of windows at a time.

A scene of height H is cut into *bands*: band k holds the rows from the k-th row of windows' top to the next one's
(the last band down to H). Once the windows of rows 0..k are added, band k is final; only the rows the next
windows still overlap stay in memory. Any band can be computed on its own by first adding the earlier rows of
windows that reach into it (at most ``crop / stride`` rows of windows): this is how a rerun resumes after the last
finished band and how several processes share the bands of one scene, with results identical to one pass.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .blending import weight_sums, window_weight
from .predictor import Predictor
from .tta import window_starts

ReadWindow = Callable[[int, int, int, int], np.ndarray]  # (y0, y1, x0, x1) -> (h, w, bands) array
FINALISE_COLUMNS = 4096  # columns normalised at a time: bounds the temporaries of the last step


@dataclass
class SceneGrid:
    """The windows of slide inference on a ``height`` x ``width`` scene and their blending weights."""

    height: int
    width: int
    crop: tuple[int, int]
    stride: tuple[int, int]
    blend: str
    ys: list[int] = field(init=False)
    xs: list[int] = field(init=False)

    def __post_init__(self):
        self.crop = (min(self.crop[0], self.height), min(self.crop[1], self.width))
        self.ys = window_starts(self.height, self.crop[0], self.stride[0])
        self.xs = window_starts(self.width, self.crop[1], self.stride[1])
        self.weight = window_weight(*self.crop, self.blend)
        self.row_sums = weight_sums(self.height, self.crop[0], self.ys, self.blend)
        self.col_sums = weight_sums(self.width, self.crop[1], self.xs, self.blend)

    @property
    def num_bands(self) -> int:
        return len(self.ys)

    @property
    def num_windows(self) -> int:
        return len(self.ys) * len(self.xs)

    def band(self, k: int) -> tuple[int, int]:
        """Rows [top, bottom) of band ``k``."""
        return self.ys[k], self.ys[k + 1] if k + 1 < len(self.ys) else self.height

    def first_row_reaching(self, k: int) -> int:
        """The first row of windows that covers band ``k``'s top row."""
        return next(j for j, y in enumerate(self.ys) if y + self.crop[0] > self.ys[k])


class _Accumulator:
    """Blended logit sums of rows [top, top + len) across the scene's width, grown and dropped a band at a time."""

    def __init__(self, num_classes: int, width: int):
        self.top = 0
        self.sums = torch.zeros((num_classes, 0, width))

    def cover(self, bottom: int) -> None:
        missing = bottom - self.top - self.sums.shape[1]
        if missing > 0:
            self.sums = torch.cat([self.sums, self.sums.new_zeros((self.sums.shape[0], missing, self.sums.shape[2]))], 1)

    def drop_above(self, row: int) -> None:
        if row > self.top:
            self.sums = self.sums[:, row - self.top:].clone()
            self.top = row


class StreamedSlide:
    """Band after band of a scene's slide prediction: ``bands(read, indices)`` yields (k, labels (h, W), probabilities
    (C, h, W) or None) for the bands ``indices`` (ascending), reading the scene through ``read`` a strip of windows
    at a time."""

    def __init__(self, predictor: Predictor, grid: SceneGrid, save_proba: bool = False, progress: bool = False):
        self.predictor, self.grid, self.save_proba = predictor, grid, save_proba
        self.progress = progress
        self.label_dtype = np.uint8 if predictor.num_classes <= 256 else np.uint16

    def bands(self, read: ReadWindow, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        indices = sorted(indices)
        bar = tqdm(total=len(indices) * len(self.grid.xs), unit="tile", desc="scene", dynamic_ncols=True,
                   disable=not (self.progress and sys.stderr.isatty()))
        acc, next_row = None, None
        with bar:
            for k in indices:
                if next_row != k:  # the first band, or one after a gap: start from the rows of windows reaching in
                    acc = _Accumulator(self.predictor.num_classes, self.grid.width)
                    for j in range(self.grid.first_row_reaching(k), k):
                        self._add_row(acc, read, j)
                self._add_row(acc, read, k, bar)
                top, bottom = self.grid.band(k)
                acc.drop_above(top)
                labels, proba = self._finalise(acc, top, bottom)
                acc.drop_above(bottom)
                next_row = k + 1
                yield k, labels, proba

    @torch.inference_mode()
    def _add_row(self, acc: _Accumulator, read: ReadWindow, j: int, bar: tqdm | None = None) -> None:
        (ch, cw), y = self.grid.crop, self.grid.ys[j]
        strip = read(y, y + ch, 0, self.grid.width)
        acc.cover(y + ch)
        row = y - acc.top
        batch = self.predictor.batch_size
        for start in range(0, len(self.grid.xs), batch):
            xs = self.grid.xs[start:start + batch]
            logits = self.predictor.logits_batch([strip[:, x:x + cw] for x in xs])
            for x, item in zip(xs, logits):
                if tuple(item.shape[-2:]) != (ch, cw):
                    raise ValueError(f"the model's eval pipeline resized a {ch}x{cw} window; scene prediction needs a "
                                     "pipeline that keeps the size (normalisation only)")
                acc.sums[:, row:row + ch, x:x + cw] += item * self.grid.weight
            if bar is not None:
                bar.update(len(xs))

    def _finalise(self, acc: _Accumulator, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = bottom - top, self.grid.width
        labels = np.empty((height, width), self.label_dtype)
        proba = np.empty((acc.sums.shape[0], height, width), np.float32) if self.save_proba else None
        rows = self.grid.row_sums[top:bottom, None]
        for x0 in range(0, width, FINALISE_COLUMNS):
            x1 = min(width, x0 + FINALISE_COLUMNS)
            logits = acc.sums[:, :height, x0:x1] / (rows * self.grid.col_sums[None, x0:x1])
            labels[:, x0:x1] = logits.argmax(0).numpy()
            if proba is not None:
                proba[:, :, x0:x1] = logits.softmax(0).numpy()
        return labels, proba


def scene_grid(height: int, width: int, crop: Sequence[int], stride: Sequence[int] | None, blend: str) -> SceneGrid:
    """The :class:`SceneGrid` of slide inference with ``crop`` windows every ``stride`` (default: two thirds of the
    crop, as :class:`SlideInference`)."""
    crop = (int(crop[0]), int(crop[1]))
    stride = tuple(int(s) for s in stride) if stride is not None else tuple(max(1, c * 2 // 3) for c in crop)
    if min(crop + stride) < 1 or any(s > c for s, c in zip(stride, crop)):
        raise ValueError(f"stride {list(stride)} must be positive and at most crop_size {list(crop)}")
    return SceneGrid(height, width, crop, stride, blend)  # type: ignore[arg-type]
