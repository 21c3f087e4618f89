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
READ_COLUMNS = 2048  # columns of a strip read at a time, beyond what the next windows need


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

    @property
    def overlap_rows(self) -> int:
        """The most rows a row of windows reaches below its band (into the next row of windows)."""
        return max(y + self.crop[0] - self.band(j)[1] for j, y in enumerate(self.ys))

    def first_row_reaching(self, k: int) -> int:
        """The first row of windows that covers band ``k``'s top row."""
        return next(j for j, y in enumerate(self.ys) if y + self.crop[0] > self.ys[k])


class _Strip:
    """Rows [y0, y1) of the scene read left to right, :data:`READ_COLUMNS` columns at a time: ``columns(x0, x1)``
    with ``x0`` never decreasing keeps only the columns from ``x0`` on."""

    def __init__(self, read: ReadWindow, y0: int, y1: int, width: int):
        self.read, self.y0, self.y1, self.width = read, y0, y1, width
        self.data: np.ndarray | None = None
        self.start = self.end = 0

    def columns(self, x0: int, x1: int) -> np.ndarray:
        if x1 > self.end:
            first = max(x0, self.end)
            end = min(self.width, max(x1, self.end + READ_COLUMNS))
            new = self.read(self.y0, self.y1, first, end)
            kept = self.data[:, x0 - self.start:] if self.data is not None and x0 < self.end else new[:, :0]
            self.data, self.start, self.end = np.concatenate([kept, new], axis=1), x0, end
        return self.data[:, x0 - self.start:x1 - self.start]


class _Carry:
    """The float32 sums rows of windows left on the rows below their band, across the width: ``data[:, :rows]``.
    One buffer for the whole scene, updated in place as a row of windows moves right (a column is read before it
    is overwritten), so neither its size nor the heap changes from row to row."""

    def __init__(self, num_classes: int, max_rows: int, width: int):
        self.data = torch.zeros((num_classes, max_rows, width))
        self.rows = 0


class _Band:
    """The output of band ``k``: labels (h, W), multilabel (C, h, W), and, with ``save_proba``, probabilities
    (channels, h, W), filled a few columns at a time."""

    def __init__(self, k: int, label_shape: tuple[int, ...], channels: int, width: int, label_dtype,
                 save_proba: bool):
        self.k = k
        self.labels = np.empty((*label_shape, width), label_dtype)
        self.proba = np.empty((channels, *label_shape[-1:], width), np.float32) if save_proba else None


class StreamedSlide:
    """Band after band of a scene's slide prediction: ``bands(read, indices)`` yields (k, labels (h, W), probabilities
    (C, h, W) or None) for the bands ``indices`` (ascending), reading the scene through ``read`` a few windows at a
    time.

    A row of windows is added left to right, a batch of windows at a time; the columns left of the next window are
    then final for the band and normalised at once. What the row adds to the rows below its band (the overlap with
    the next row of windows) is the only state kept across the width: float32 sums of ``crop - stride`` rows, the
    same numbers the in-memory sum holds there, so the result stays exact."""

    def __init__(self, predictor: Predictor, grid: SceneGrid, save_proba: bool = False, progress: bool = False):
        self.predictor, self.grid, self.save_proba = predictor, grid, save_proba
        self.progress, self.task = progress, predictor.task
        self.channels = self.task.out_channels  # the logits summed: binary one, else one per class
        self.label_dtype = np.uint8 if predictor.num_classes <= 256 else np.uint16

    def bands(self, read: ReadWindow, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        indices = sorted(indices)
        bar = tqdm(total=len(indices) * len(self.grid.xs), unit="tile", desc="scene", dynamic_ncols=True,
                   disable=not (self.progress and sys.stderr.isatty()))
        carry, next_row = _Carry(self.channels, self.grid.overlap_rows, self.grid.width), None
        with bar:
            for k in indices:
                if next_row != k:  # the first band, or one after a gap: start from the rows of windows reaching in
                    carry.rows = 0
                    for j in range(self.grid.first_row_reaching(k), k):
                        self._add_row(read, j, carry)
                top, bottom = self.grid.band(k)
                label_shape = (self.channels, bottom - top) if self.task.target_dims == 4 else (bottom - top,)
                band = _Band(k, label_shape, self.channels, self.grid.width, self.label_dtype, self.save_proba)
                self._add_row(read, k, carry, band, bar)
                next_row = k + 1
                yield k, band.labels, band.proba

    @torch.inference_mode()
    def _add_row(self, read: ReadWindow, j: int, carry: _Carry, band: _Band | None = None,
                 bar: tqdm | None = None) -> None:
        """Add row of windows ``j`` on top of ``carry`` (the sums earlier rows left on its rows), fill ``band``
        and leave in ``carry`` the sums this row leaves on the rows below band ``j``."""
        (ch, cw), (y, xs) = self.grid.crop, (self.grid.ys[j], self.grid.xs)
        below = y + ch - self.grid.band(j)[1]
        strip = _Strip(read, y, y + ch, self.grid.width)
        sums, left = torch.zeros((self.channels, ch, 0)), 0  # columns [left, left + width) of the row
        batch = self.predictor.batch_size
        for start in range(0, len(xs), batch):
            chunk = xs[start:start + batch]
            sums = self._widen(sums, left, chunk[-1] + cw, carry)
            windows = self.predictor.window_batch([strip.columns(x, x + cw) for x in chunk])
            if tuple(windows.shape[-2:]) != (ch, cw):
                raise ValueError(f"the model's eval pipeline resized a {ch}x{cw} window; scene prediction needs a "
                                 "pipeline that keeps the size (normalisation only)")
            for x, item in zip(chunk, self.predictor.logits_of_batch(windows)):
                sums[:, :, x - left:x - left + cw] += item * self.grid.weight
            final = xs[start + batch] if start + batch < len(xs) else self.grid.width
            done, sums = sums[:, :, :final - left], sums[:, :, final - left:]
            carry.data[:, :below, left:final] = done[:, ch - below:]
            if band is not None:
                self._finalise(band, done[:, :ch - below], left, final)
            left = final
            if bar is not None:
                bar.update(len(chunk))
        carry.rows = below

    @staticmethod
    def _widen(sums: torch.Tensor, left: int, right: int, carry: _Carry) -> torch.Tensor:
        """``sums`` (columns from ``left``) extended to column ``right``: what ``carry`` holds there, zeros below."""
        have = left + sums.shape[2]
        if right <= have:
            return sums
        more = sums.new_zeros((sums.shape[0], sums.shape[1], right - have))
        more[:, :carry.rows] = carry.data[:, :carry.rows, have:right]
        return torch.cat([sums, more], 2)

    def _finalise(self, band: _Band, sums: torch.Tensor, x0: int, x1: int) -> None:
        top, bottom = self.grid.band(band.k)
        logits = sums / (self.grid.row_sums[top:bottom, None] * self.grid.col_sums[None, x0:x1])
        band.labels[..., x0:x1] = self.task.labels(logits[None])[0].numpy()
        if band.proba is not None:
            band.proba[:, :, x0:x1] = self.task.activation(logits[None])[0].numpy()


def scene_grid(height: int, width: int, crop: Sequence[int], stride: Sequence[int] | None, blend: str) -> SceneGrid:
    """The :class:`SceneGrid` of slide inference with ``crop`` windows every ``stride`` (default: two thirds of the
    crop, as :class:`SlideInference`)."""
    crop = (int(crop[0]), int(crop[1]))
    stride = tuple(int(s) for s in stride) if stride is not None else tuple(max(1, c * 2 // 3) for c in crop)
    if min(crop + stride) < 1 or any(s > c for s, c in zip(stride, crop)):
        raise ValueError(f"stride {list(stride)} must be positive and at most crop_size {list(crop)}")
    return SceneGrid(height, width, crop, stride, blend)  # type: ignore[arg-type]
