"""Pictures of predictions: colourised label maps, overlays with a class legend, confusion-matrix heat maps.

Drawn with Pillow alone (its built-in font), so no plotting library is needed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE_COLOR = (255, 255, 255)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) uint8 RGB; ``ignore_index`` white, indices beyond the palette black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray([list(c) for c in palette], dtype=np.uint8).reshape(-1, 3)[:256]
    table[ignore_index] = IGNORE_COLOR
    return table[np.clip(np.asarray(labels), 0, 255).astype(np.intp)]


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], class_names: Sequence[str],
            alpha: float = 0.5) -> np.ndarray:
    """The image blended with its colourised prediction, with a legend of the classes present on the right."""
    from PIL import Image, ImageDraw

    color = colorize(labels, palette).astype(np.float32)
    blended = (image.astype(np.float32) * (1 - alpha) + color * alpha).round().astype(np.uint8)
    present = [int(c) for c in np.unique(labels) if 0 <= c < len(class_names)]
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


def confusion_image(confusion: Sequence[Sequence[float]], class_names: Sequence[str], cell: int = 28) -> np.ndarray:
    """A row-normalised confusion matrix (rows: ground truth, columns: prediction) as an RGB heat map with class
    names on both axes and each cell's percentage."""
    from PIL import Image, ImageDraw

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    font = _font(11)
    label_w = 10 + max(int(font.getlength(name)) for name in class_names)
    top = label_w + 20  # column names are drawn rotated
    left = label_w + 20
    canvas = Image.new("RGB", (max(left + n * cell + 10, 300), top + n * cell + 30), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            shade = int(round(255 * (1 - v)))
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell, y + cell], fill=(shade, shade, 255), outline=(200, 200, 200))
            if v > 0:
                text = f"{100 * v:.0f}"
                draw.text((x + 3, y + cell // 3), text, fill=(255, 255, 255) if v > 0.5 else (0, 0, 0), font=font)
        draw.text((8, top + i * cell + cell // 3), class_names[i], fill=(0, 0, 0), font=font)
    columns = Image.new("RGB", (top, n * cell), (255, 255, 255))  # names written horizontally, then rotated
    cdraw = ImageDraw.Draw(columns)
    for j in range(n):
        cdraw.text((8, j * cell + cell // 3), class_names[j], fill=(0, 0, 0), font=font)
    canvas.paste(columns.rotate(90, expand=True), (left, 0))
    draw.text((8, top + n * cell + 10), "rows: ground truth, columns: prediction (% of row)", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
