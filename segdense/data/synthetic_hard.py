"""SyntheticHard: a harder embedded dataset for recipe work (``dataset=synthetic_hard``), no downloads.

Where :mod:`.synthetic` gives every class its own colour and texture, here only the *shape* tells the
class: every object gets a random colour and a random texture (flat, stripes, checker or noise), the
background is a coloured multi-scale texture cluttered with irregular blobs and one-pixel scratches
(all labelled background), objects range from a few pixels to a quarter of the image, bars are thin,
objects overlap and background clutter is drawn over some of them (occlusion). Image sides vary per
sample between ``min_size`` and ``max_size`` (256-384 by default). A one-pixel ignore band (255)
runs along every label border, as in VOC. ``clutter=False`` leaves out the blobs and scratches: the
objects then lie on a textured, noisy background only, an easier variant that a CPU can learn in a few
hundred iterations (docs/training.md).
"""
from __future__ import annotations

import numpy as np

from .base import Transform
from .synthetic import SeededScenes, ignore_borders, shape_window, smooth_noise

CLASS_NAMES = ["background", "disc", "bar", "triangle", "ring"]
PALETTE = [(0, 0, 0), (220, 20, 60), (60, 180, 75), (65, 105, 225), (240, 200, 40)]


def _texture(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """An (h, w, 3) float32 patch: a random colour with a random texture, tied to no class."""
    color = rng.uniform(0, 255, size=3).astype(np.float32)
    kind = int(rng.integers(0, 4))
    if kind == 0:  # flat
        pattern = np.zeros_like(dy)
    elif kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
        pattern = np.sign(np.sin((dx * np.cos(angle) + dy * np.sin(angle)) * 2 * np.pi / period))
    elif kind == 2:  # checker
        cell = rng.uniform(2, 8)
        pattern = (np.floor(dx / cell) + np.floor(dy / cell)) % 2 * 2 - 1
    else:  # pixel noise
        pattern = rng.uniform(-1, 1, size=dy.shape)
    amplitude = rng.uniform(10, 45)
    second = rng.uniform(-1, 1, size=3).astype(np.float32)  # texture tints the colour, not only grey
    return color + amplitude * pattern[..., None].astype(np.float32) * (0.6 + 0.4 * second)


def _shape_mask(cls: int, rng: np.random.Generator, radius: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Pixels of a shape of class ``cls`` centred at (0, 0) in the offset grids ``dy``, ``dx``."""
    dist2 = dy * dy + dx * dx
    if cls == 1:  # disc
        return dist2 <= radius * radius
    if cls == 2:  # thin bar: long and 2-7 px wide, at any angle
        angle = rng.uniform(0, np.pi)
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.abs(along) <= radius) & (np.abs(across) <= rng.uniform(1.0, 3.5))
    if cls == 3:  # triangle: inside all three half-planes of its counter-clockwise edges
        corners = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.35, 0.35, 3)
        px, py = radius * np.cos(corners), radius * np.sin(corners)
        inside = np.ones(dy.shape, dtype=bool)
        for k in range(3):
            ex, ey = px[(k + 1) % 3] - px[k], py[(k + 1) % 3] - py[k]
            inside &= ex * (dy - py[k]) - ey * (dx - px[k]) >= 0
        return inside
    inner = radius * rng.uniform(0.45, 0.75)  # ring
    return (dist2 <= radius * radius) & (dist2 >= inner * inner)


def _blob(rng: np.random.Generator, height: int, width: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """An irregular blob (a thresholded smooth noise inside a soft disc): background clutter."""
    scale = min(height, width)
    radius = rng.uniform(0.04, 0.18) * scale
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    noise = smooth_noise(rng, height, width, max(4, int(radius / 2)))
    return ((yy - cy) ** 2 + (xx - cx) ** 2) / (radius * radius) + 0.8 * noise < 0.8


def _scratch(rng: np.random.Generator, height: int, width: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A one-pixel straight line across part of the image: background clutter, thinner than bars."""
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (np.abs(across) <= 0.5) & (np.abs(along) <= rng.uniform(0.2, 0.6) * min(height, width))


def render_hard_scene(rng: np.random.Generator, height: int, width: int,
                      clutter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One scene from ``rng``: (RGB uint8 (H, W, 3), uint8 (H, W) labels with 255 = ignore);
    ``clutter=False``: no background blobs or scratches."""
    scale = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Background: a random colour with coarse and fine texture of random strength.
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    coarse, fine = smooth_noise(rng, height, width, 48), smooth_noise(rng, height, width, 6)
    image = base + (rng.uniform(15, 50) * coarse + rng.uniform(5, 25) * fine)[..., None] * rng.uniform(0.5, 1.0, 3)
    image = image.astype(np.float32)
    labels = np.zeros((height, width), dtype=np.uint8)

    def add_clutter(count: int) -> None:
        if not clutter:
            return
        for _ in range(count):
            region = _blob(rng, height, width, yy, xx) if rng.random() < 0.6 else _scratch(rng, height, width, yy, xx)
            image[region] = _texture(rng, yy, xx)[region]
            labels[region] = 0

    add_clutter(int(rng.integers(2, 6)))
    for _ in range(int(rng.integers(4, 11))):
        cls = int(rng.integers(1, 5))
        # Log-uniform size: from a few pixels across to a quarter of the image.
        radius = float(np.exp(rng.uniform(np.log(0.025), np.log(0.25)))) * scale
        if cls == 2:
            radius *= 1.5  # bars are long
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        window = shape_window(yy, xx, cy, cx, radius)
        if window is None:
            continue
        (top, bottom, left, right), dy, dx = window
        region = _shape_mask(cls, rng, radius, dy, dx)
        image[top:bottom, left:right][region] = _texture(rng, dy, dx)[region]
        labels[top:bottom, left:right][region] = cls
    add_clutter(int(rng.integers(0, 3)))  # clutter in front: occludes some objects

    contrast, brightness = rng.uniform(0.7, 1.2), rng.uniform(-25, 25)
    image = (image - 128.0) * contrast + 128.0 + brightness
    image += rng.normal(0.0, rng.uniform(3.0, 15.0), size=image.shape).astype(np.float32)
    ignore_borders(labels)
    return np.clip(image, 0, 255).astype(np.uint8), labels


class SyntheticHard(SeededScenes):
    """Shapes told apart by shape alone: ``background``, ``disc``, ``bar``, ``triangle``, ``ring``.

    Sample ``i`` of a split is generated from the seed ``(seed, split, i)``: the same on every call
    and machine, different across seeds, and no scene shared between train, val and test.

    Args:
        split: ``train``, ``val`` or ``test``.
        num_samples: samples in the split (default 2000 for train, 200 otherwise).
        min_size, max_size: each image's height and width are drawn from this range (inclusive);
            equal values give fixed-size images (small ones for tests and CPU runs).
        seed: base seed of the dataset.
        clutter: draw background clutter (blobs and scratches in random colours and textures,
            some over the objects); ``False`` for the easier variant without it.
        transform: callable ``(image, mask) -> (image tensor, mask tensor)``.
    """

    name = "synthetic_hard"
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, split: str = "train", num_samples: int | None = None, min_size: int = 256,
                 max_size: int = 384, seed: int = 0, clutter: bool = True, transform: Transform | None = None):
        super().__init__(split, num_samples, seed, transform)
        if clutter not in (True, False):
            raise ValueError(f"clutter must be true or false, got {clutter!r}")
        self.clutter = bool(clutter)
        if not 32 <= int(min_size) <= int(max_size):
            raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = (int(v) for v in rng.integers(self.min_size, self.max_size + 1, size=2))
        return render_hard_scene(rng, height, width, self.clutter)
