"""Where training and validation windows lie in large scenes: random windows (TorchGeo's ``RandomGeoSampler``),
windows centred on a pixel of a class drawn uniformly (from a low-resolution class index built once from the
masks), and a grid of whole windows whose owned parts cover every pixel exactly once (TorchGeo's
``GridGeoSampler``, without the double count). A window is ``(y0, y1, x0, x1)``."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Window = tuple[int, int, int, int]
MaskReader = Callable[[int, int, int, int, int], np.ndarray]  # (scene, y0, y1, x0, x1) -> (h, w, bands) mask


def grid_starts(length: int, patch: int, stride: int) -> list[tuple[int, int, int]]:
    """Per window along one axis (start, first owned, end owned): starts every ``stride`` pixels, the last moved
    back to end at ``length``; a window owns the pixels no earlier window holds."""
    if not 1 <= stride <= patch:
        raise ValueError(f"grid stride must be between 1 and the patch size {patch} (no gaps), got {stride}")
    starts = [0]
    while starts[-1] + patch < length:
        starts.append(min(starts[-1] + stride, length - patch))
    ends = [min(start + patch, length) for start in starts]
    return [(start, start if i == 0 else ends[i - 1], ends[i]) for i, start in enumerate(starts)]


def grid_windows(height: int, width: int, patch: tuple[int, int], stride: tuple[int, int],
                 ) -> list[tuple[Window, Window]]:
    """Row-major (window, owned part) pairs: windows of ``patch`` (the whole side where the scene is smaller)
    every ``stride`` pixels, the last row and column moved back inside the scene; the owned parts (pixels no
    earlier window holds) cover every pixel exactly once, so validation counts each pixel once."""
    return [((y, y_end, x, x_end), (y_own, y_end, x_own, x_end))
            for y, y_own, y_end in grid_starts(height, patch[0], stride[0])
            for x, x_own, x_end in grid_starts(width, patch[1], stride[1])]


def window_around(y: int, x: int, height: int, width: int, patch: tuple[int, int]) -> Window:
    """The ``patch`` window centred on pixel (y, x), moved inside the scene where it would cross an edge."""
    y0 = min(max(y - patch[0] // 2, 0), height - patch[0])
    x0 = min(max(x - patch[1] // 2, 0), width - patch[1])
    return y0, y0 + patch[0], x0, x0 + patch[1]


def random_window(rng: np.random.Generator, sizes: Sequence[tuple[int, int]], patch: tuple[int, int],
                  ) -> tuple[int, Window]:
    """A scene drawn with probability proportional to its area, and a ``patch`` window uniformly inside it."""
    areas = np.array([h * w for h, w in sizes], dtype=np.float64)
    scene = int(rng.choice(len(sizes), p=areas / areas.sum()))
    height, width = sizes[scene]
    y0 = int(rng.integers(0, height - patch[0] + 1))
    x0 = int(rng.integers(0, width - patch[1] + 1))
    return scene, (y0, y0 + patch[0], x0, x0 + patch[1])


def class_planes(mask: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """Boolean (C, h, w): where each class is (class-index masks: value == c; multilabel: band c == 1)."""
    if multilabel:
        return np.moveaxis(mask == 1, -1, 0)
    return mask[..., 0][None] == np.arange(num_classes)[:, None, None]


class ClassIndex:
    """Per class, how many of its pixels each ``cell`` x ``cell`` block of every scene holds; built in one pass over
    the masks, a strip of ``strip_rows`` rows (a multiple of ``cell``) at a time.

    :meth:`draw` picks a class uniformly among those present, then one of its pixels uniformly (a block with
    probability proportional to its count, then that pixel among the block's, read back at full resolution)."""

    def __init__(self, read_mask: MaskReader, sizes: Sequence[tuple[int, int]], num_classes: int, cell: int,
                 multilabel: bool = False, strip_rows: int = 0):
        if cell < 1:
            raise ValueError(f"class index cell must be at least 1 pixel, got {cell}")
        self.read_mask, self.sizes, self.cell, self.multilabel = read_mask, list(sizes), cell, multilabel
        self.num_classes = num_classes
        strip = max(cell, -(-strip_rows // cell) * cell)
        counts = [self._scene_counts(scene, h, w, strip) for scene, (h, w) in enumerate(self.sizes)]
        self.grids = [c.shape[1:] for c in counts]
        offsets = np.cumsum([0] + [int(np.prod(g)) for g in self.grids])
        self.offsets = offsets
        flat = [np.concatenate([c[k].ravel() for c in counts]) for k in range(num_classes)]
        self.blocks = [np.flatnonzero(f) for f in flat]  # per class: global block numbers holding it
        self.cumulative = [np.cumsum(f[b], dtype=np.int64) for f, b in zip(flat, self.blocks)]
        self.pixels = np.array([int(c[-1]) if c.size else 0 for c in self.cumulative], dtype=np.int64)
        self.present = np.flatnonzero(self.pixels)

    def _scene_counts(self, scene: int, height: int, width: int, strip: int) -> np.ndarray:
        cell = self.cell
        rows, cols = -(-height // cell), -(-width // cell)
        counts = np.zeros((self.num_classes, rows, cols), np.uint32)
        for y0 in range(0, height, strip):
            y1 = min(y0 + strip, height)
            planes = class_planes(self.read_mask(scene, y0, y1, 0, width), self.num_classes, self.multilabel)
            padded = np.zeros((self.num_classes, -(-(y1 - y0) // cell) * cell, cols * cell), bool)
            padded[:, :y1 - y0, :width] = planes
            blocks = padded.reshape(self.num_classes, -1, cell, cols, cell).sum(axis=(2, 4))
            counts[:, y0 // cell:y0 // cell + blocks.shape[1]] = blocks
        return counts

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(class, scene, y, x): a class uniformly among those present, and one of its pixels uniformly."""
        if not self.present.size:
            raise ValueError("class-balanced sampling: no mask holds any labelled pixel of any class")
        k = int(self.present[rng.integers(self.present.size)])
        r = int(rng.integers(self.pixels[k]))
        slot = int(np.searchsorted(self.cumulative[k], r, side="right"))
        rank = r - (int(self.cumulative[k][slot - 1]) if slot else 0)  # which of the block's pixels of class k
        block = int(self.blocks[k][slot])
        scene = int(np.searchsorted(self.offsets, block, side="right")) - 1
        by, bx = divmod(block - int(self.offsets[scene]), int(self.grids[scene][1]))
        height, width = self.sizes[scene]
        y0, x0 = by * self.cell, bx * self.cell
        y1, x1 = min(y0 + self.cell, height), min(x0 + self.cell, width)
        plane = class_planes(self.read_mask(scene, y0, y1, x0, x1), self.num_classes, self.multilabel)[k]
        ys, xs = np.nonzero(plane)  # row-major, the order the rank counts in
        return k, scene, y0 + int(ys[rank]), x0 + int(xs[rank])
