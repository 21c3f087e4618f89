"""SyntheticShapes: an embedded dataset generated on the fly, so every command runs with no downloads.

Each scene is a textured grey background with 3-6 overlapping shapes. Every class has its own shape *and* its own
colour family and texture, so a small receptive field is enough to tell them apart (a small DenseNet learns them
on a CPU in minutes) while an untrained model scores near chance. A one-pixel band on every label border and,
in some scenes, a small patch of noise are labelled 255 (ignore), as in VOC.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .base import SegmentationDataset, Transform, check_split
from .io import IGNORE_INDEX

CLASS_NAMES = ["background", "circle", "rectangle", "triangle", "ring"]
PALETTE = [(0, 0, 0), (220, 20, 60), (60, 180, 75), (65, 105, 225), (240, 200, 40)]
# Colour family in which each shape class is painted (RGB centre; each shape jitters around it).
_SHAPE_COLORS = np.array([(0, 0, 0), (205, 45, 45), (45, 170, 60), (50, 80, 215), (225, 195, 35)], dtype=np.float32)
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}


def _size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(v) for v in image_size)
    return height, width


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(H, W) float32 noise in [-1, 1], smooth at the scale of ``cell`` pixels: uniform values on a
    coarse grid, bilinearly interpolated."""
    coarse = rng.uniform(-1.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1.001, height, dtype=np.float32)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width, dtype=np.float32)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    return (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
            + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)


def shape_window(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float):
    """The box around a shape of ``radius`` centred at (cy, cx), clipped to the image of pixel
    coordinates ``yy``, ``xx``: ((top, bottom, left, right), dy, dx) with the pixels' offsets from
    the centre, or None when the box lies outside the image."""
    height, width = yy.shape
    top, bottom = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, height)
    left, right = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, width)
    if top >= bottom or left >= right:
        return None
    return (top, bottom, left, right), yy[top:bottom, left:right] - cy, xx[top:bottom, left:right] - cx


def ignore_borders(labels: np.ndarray) -> None:
    """Label a one-pixel band on every label border ignore (255), as VOC marks object boundaries."""
    border = np.zeros_like(labels, dtype=bool)
    border[1:] |= labels[1:] != labels[:-1]
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    labels[border] = IGNORE_INDEX


def _shape_region(rng: np.random.Generator, cls: int, radius: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The pixels of a class-``cls`` shape of ``radius`` around (0, 0) in the window offsets ``dy``, ``dx``."""
    if cls == 1:  # disc
        return dy * dy + dx * dx <= radius * radius
    if cls == 2:  # rotated rectangle
        angle = rng.uniform(0, np.pi)
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * rng.uniform(0.45, 0.9))
    if cls == 3:  # triangle from three points on a circle
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        px, py = radius * np.cos(angles), radius * np.sin(angles)
        sides = [(px[(k + 1) % 3] - px[k]) * (dy - py[k]) - (py[(k + 1) % 3] - py[k]) * (dx - px[k])
                 for k in range(3)]
        inside_ccw = (sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)
        return inside_ccw | ((sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))
    dist2 = dy * dy + dx * dx  # ring
    return (dist2 <= radius * radius) & (dist2 >= (radius * rng.uniform(0.45, 0.65)) ** 2)


def _shape_patch(cls: int, color: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The shape's colour over its window, with its class's texture."""
    patch = np.broadcast_to(color, dy.shape + (3,)).copy()
    if cls == 2:  # stripes: rectangles are also recognisable by texture
        patch += 18.0 * np.sign(np.sin((dx + dy) * 0.9))[..., None]
    elif cls == 3:  # fine checker texture
        patch += 14.0 * ((np.floor(dx / 3) + np.floor(dy / 3)) % 2 * 2 - 1)[..., None]
    return patch


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene from ``rng``: (RGB uint8 (H, W, 3), uint8 (H, W) labels with 255 = ignore)."""
    scale = min(height, width)
    # Background: smooth low-frequency grey texture plus pixel noise.
    smooth = smooth_noise(rng, height, width, 16)
    grey = rng.uniform(100.0, 150.0)
    tint = rng.uniform(-8.0, 8.0, size=3).astype(np.float32)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = grey + 30.0 * smooth[..., None] + tint
    labels = np.zeros((height, width), dtype=np.uint8)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(3, 7))):
        cls = int(rng.integers(1, 5))
        radius = rng.uniform(0.08, 0.22) * scale
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        window = shape_window(yy, xx, cy, cx, radius)
        if window is None:
            continue
        (top, bottom, left, right), dy, dx = window
        region = _shape_region(rng, cls, radius, dy, dx)
        color = _SHAPE_COLORS[cls] * rng.uniform(0.8, 1.1) + rng.uniform(-25, 25, size=3)
        patch = _shape_patch(cls, color, dy, dx)
        view_img, view_lab = image[top:bottom, left:right], labels[top:bottom, left:right]
        view_img[region] = patch[region]
        view_lab[region] = cls

    image += rng.normal(0.0, 7.0, size=image.shape).astype(np.float32)
    ignore_borders(labels)
    if rng.random() < 0.3:  # a small void patch of noise, labelled ignore
        side = int(rng.uniform(0.05, 0.11) * scale) + 1
        top, left = int(rng.integers(0, max(height - side, 1))), int(rng.integers(0, max(width - side, 1)))
        noise_shape = (min(side, height - top), min(side, width - left), 3)
        image[top:top + side, left:left + side] = rng.uniform(0, 255, size=noise_shape)
        labels[top:top + side, left:left + side] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), labels


class SeededScenes(SegmentationDataset, ABC):
    """A generated dataset: sample ``i`` of a split is rendered from the seed ``(seed, split, i)``, so
    it is the same on every call and machine, differs across seeds, and train, val and test never
    share a scene. Subclasses set ``name`` and implement :meth:`render`."""

    name = "synthetic"

    def __init__(self, split: str, num_samples: int | None, seed: int, transform: Transform | None):
        super().__init__(transform)
        check_split(split, list(_SPLIT_STREAMS), self.name)
        self.split = split
        self.num_samples = _DEFAULT_SIZES[split] if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.seed = int(seed)

    @abstractmethod
    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 (H, W, 3), uint8 (H, W) labels) of one scene drawn from ``rng``."""

    def __len__(self) -> int:
        return self.num_samples

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} {self.name} samples")
        image, labels = self.render(np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index]))
        return image, labels.astype(np.int64)

    def load_image(self, index: int) -> np.ndarray:
        return self.load_raw(index)[0]

    def load_mask(self, index: int) -> np.ndarray:
        return self.load_raw(index)[1]

    def describe(self, index: int) -> tuple[str, str]:
        name = f"{self.name}:{self.split}[{index}] (seed {self.seed})"
        return name, name


class SyntheticShapes(SeededScenes):
    """Procedural shapes: ``background``, ``circle``, ``rectangle``, ``triangle``, ``ring``.

    Sample ``i`` of a split is generated from the seed ``(seed, split, i)``, so it is the same on every call and
    machine, differs across seeds, and train, val and test never share a scene.

    Args:
        split: ``train``, ``val`` or ``test``.
        num_samples: samples in the split (default 2000 for train, 200 otherwise).
        image_size: side, or (height, width), of every image.
        seed: base seed of the dataset.
        transform: callable ``(image, mask) -> (image tensor, mask tensor)``.
    """

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, split: str = "train", num_samples: int | None = None, image_size: int | tuple[int, int] = 128,
                 seed: int = 0, transform: Transform | None = None):
        super().__init__(split, num_samples, seed, transform)
        self.image_size = _size_pair(image_size)
        if min(self.image_size) < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return render_scene(rng, *self.image_size)


class SyntheticBinary(SyntheticShapes):
    """The shapes of :class:`SyntheticShapes` as a binary task: ``shape`` (any of them) on ``background``; masks of
    0/1 with the same ignored borders."""

    class_names = ["background", "shape"]
    mask_task = "binary"
    palette = [(0, 0, 0), (255, 255, 255)]

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, labels = super().render(rng)
        return image, np.where(labels == IGNORE_INDEX, IGNORE_INDEX, labels > 0).astype(np.int64)


class SyntheticMultilabel(SyntheticShapes):
    """The shapes of :class:`SyntheticShapes` as a multilabel task with overlapping labels: ``shape`` (any shape)
    and ``round`` (circles and rings, which are shapes too). Masks are (H, W, 2) with one 0/1 band per label,
    255 on the ignored borders."""

    class_names = ["shape", "round"]
    mask_task = "multilabel"
    palette = [(60, 180, 75), (220, 20, 60)]

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, labels = super().render(rng)
        bands = np.stack([labels > 0, (labels == 1) | (labels == 4)], axis=-1).astype(np.int64)
        return image, np.where((labels == IGNORE_INDEX)[..., None], IGNORE_INDEX, bands)
