"""Pictures of predictions: colourised label maps and overlays with a class legend.

Drawn with Pillow alone (its built-in font); charts (the confusion matrix among them) are in
:mod:`segdense.reports.plots`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE_COLOR = (255, 255, 255)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) uint8 RGB; ``ignore_index`` white, indices beyond the palette black.
    Multilabel (C, H, W) 0/1 labels: the mean colour of the labels a pixel has, black for none, white where every
    label is ``ignore_index``."""
    if np.ndim(labels) == 3:
        return _colorize_bands(np.asarray(labels), palette, ignore_index)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray([list(c) for c in palette], dtype=np.uint8).reshape(-1, 3)[:256]
    table[ignore_index] = IGNORE_COLOR
    return table[np.clip(np.asarray(labels), 0, 255).astype(np.intp)]


def preview_rgb(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image of any dtype as 8-bit RGB to look at: 8-bit RGB as it is; otherwise its first three
    bands (one band as grey), each stretched between its 2nd and 98th percentiles. For pictures only."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return image
    bands = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    bands = np.nan_to_num(bands.astype(np.float64))
    low, high = np.percentile(bands, 2, axis=(0, 1)), np.percentile(bands, 98, axis=(0, 1))
    stretched = (bands - low) / np.maximum(high - low, 1e-12)
    return (np.clip(stretched, 0, 1) * 255).round().astype(np.uint8)


def _colorize_bands(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int) -> np.ndarray:
    colours = np.asarray([list(c) for c in palette[: len(labels)]], dtype=np.float64).reshape(-1, 3)
    on = (labels == 1).astype(np.float64)
    count = on.sum(0)
    mean = np.einsum("chw,cd->hwd", on, colours) / np.maximum(count, 1)[..., None]
    mean[(labels == ignore_index).all(0)] = IGNORE_COLOR
    return mean.round().astype(np.uint8)


def present_classes(labels: np.ndarray, num_classes: int) -> list[int]:
    """The classes a prediction holds: (H, W) class indices, or (C, H, W) 0/1 labels."""
    labels = np.asarray(labels)
    if labels.ndim == 3:
        return [c for c in range(min(num_classes, len(labels))) if (labels[c] == 1).any()]
    return [int(c) for c in np.unique(labels) if 0 <= c < num_classes]


def input_picture(image, scaling=None) -> np.ndarray:
    """Model input (C, H, W) (tensor or array) as 8-bit RGB (H, W, 3) to look at: back in the file's units by
    ``scaling`` (the pipeline's :class:`~segdense.data.normalisation.InputScaling`), then :func:`preview_rgb`.
    Without ``scaling`` the input itself is stretched (per band, so the same picture as the file's values gives,
    short of clipping)."""
    if scaling is not None:
        return preview_rgb(scaling.to_file_units(image))
    array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
    return preview_rgb(np.moveaxis(array, 0, -1))


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], class_names: Sequence[str],
            alpha: float = 0.5) -> np.ndarray:
    """The image blended with its colourised prediction ((H, W) class indices or (C, H, W) multilabel 0/1 labels),
    with a legend of the classes present on the right."""
    from PIL import Image, ImageDraw

    image = preview_rgb(image)
    color = colorize(labels, palette).astype(np.float32)
    blended = (image.astype(np.float32) * (1 - alpha) + color * alpha).round().astype(np.uint8)
    present = present_classes(labels, len(class_names))
    font = _font(max(10, min(24, image.shape[0] // 20)))
    line = max(14, int(font.getbbox("Ag")[3]) + 6)
    box = line - 4
    text_width = max([int(font.getlength(class_names[c])) for c in present] + [0])
    legend_w = 12 + box + 6 + text_width
    height = max(image.shape[0], 8 + line * len(present))
    canvas = Image.new("RGB", (image.shape[1] + legend_w, height), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 8
    for i, c in enumerate(present):
        y = 4 + i * line
        fill = tuple(int(v) for v in palette[c]) if c < len(palette) else (0, 0, 0)
        draw.rectangle([x0, y, x0 + box, y + box], fill=fill, outline=(0, 0, 0))
        draw.text((x0 + box + 6, y), class_names[c], fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
