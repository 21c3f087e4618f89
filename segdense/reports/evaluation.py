"""The evaluation report: ``per_image.csv`` and ``report/index.html`` (metrics table, row-normalised confusion
matrix, gallery of the worst images: image | ground truth | prediction | error map, with a class legend)."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from segdense.inference.draw import colorize
from segdense.inference.per_image import GalleryItem, ImageScore
from segdense.inference.writers import atomic_write_bytes, write_png

from .html import esc, image, legend, percent, table, write_page
from .plots import confusion_chart

CORRECT, WRONG, IGNORED = (40, 40, 40), (230, 30, 30), (255, 255, 255)


def write_per_image_csv(path: str | os.PathLike, scores: Sequence[ImageScore], class_names: Sequence[str]) -> Path:
    """One row per image in dataset order: index, image, labelled pixels, pixel accuracy, mIoU and the IoU of
    every class (fractions; empty where the class is in neither the label nor the prediction)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "image", "pixels", "pixel_acc", "mIoU", *[f"IoU_{n}" for n in class_names]])
    fmt = lambda v: "" if math.isnan(v) else f"{v:.6f}"  # noqa: E731
    for s in scores:
        writer.writerow([s.index, s.name, s.pixels, fmt(s.pixel_acc), fmt(s.miou), *[fmt(v) for v in s.iou]])
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def error_map(label: np.ndarray, prediction: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """RGB: wrong pixels red, right ones dark grey, ignored ones white. Multilabel (C, H, W) labels: a pixel is
    wrong when any of its labelled classes is, ignored when all of them are."""
    wrong = (label != prediction) & (label != ignore_index)
    ignored = label == ignore_index
    if label.ndim == 3:
        wrong, ignored = wrong.any(0), ignored.all(0)
    out = np.empty((*wrong.shape, 3), dtype=np.uint8)
    out[:] = CORRECT
    out[wrong] = WRONG
    out[ignored] = IGNORED
    return out


def has_one_matrix(result: dict) -> bool:
    """Whether ``result["confusion"]`` is one (C, C) class matrix (multiclass) to chart, not (C, 2, 2) counts per
    class (binary, multilabel), whose scores the per-class table shows."""
    return np.ndim(result["confusion"]) == 2


def write_eval_report(directory: str | os.PathLike, result: dict, scores: Sequence[ImageScore],
                      worst: Sequence[GalleryItem], class_names: Sequence[str], palette, title_info: dict) -> Path:
    """Write ``directory/index.html`` and its PNGs; returns the page."""
    directory = Path(directory)
    one_matrix = has_one_matrix(result)
    if one_matrix:
        confusion_chart(result["confusion"], class_names, directory / "confusion.png")
    summary = table(["mIoU", "mAcc", "aAcc", "images"],
                    [[percent(result["mIoU"]), percent(result["mAcc"]), percent(result["aAcc"]), len(scores)]],
                    name_columns=0, attrs='id="summary"')
    per_class = table(["class", "IoU", "Acc"],
                      [[c["name"], percent(c["IoU"]), percent(c["Acc"])] for c in result["per_class"]],
                      attrs='id="per-class"')
    rows = []
    for rank, item in enumerate(worst):
        stem = f"gallery/{rank:03d}"
        write_png(directory / f"{stem}_image.png", item.image)
        write_png(directory / f"{stem}_label.png", colorize(item.label, palette))
        write_png(directory / f"{stem}_prediction.png", colorize(item.prediction, palette))
        write_png(directory / f"{stem}_error.png", error_map(item.label, item.prediction))
        s = item.score
        rows.append(
            f'<div class="row"><p><b>{rank + 1}. {esc(s.name)}</b> — mIoU {percent(s.miou)}, pixel accuracy '
            f"{percent(s.pixel_acc)}</p>"
            + "".join(image(f"{stem}_{kind}.png", f"{kind} of {s.name}", caption)
                      for kind, caption in (("image", "image"), ("label", "ground truth"),
                                            ("prediction", "prediction"), ("error", "error map")))
            + "</div>")
    info = " · ".join(f"{esc(k)}: {esc(v)}" for k, v in title_info.items())
    body = "\n".join([
        f'<p class="meta">{info}</p>',
        "<h2>Metrics (%)</h2>", summary, per_class,
        *(["<h2>Confusion matrix</h2>",
            '<p class="meta">Rows: ground truth, columns: prediction; each row sums to 100 %.</p>',
            image("confusion.png", "confusion matrix")] if one_matrix else []),
        f"<h2>The {len(worst)} worst images (lowest mIoU)</h2>",
        legend(class_names, palette),
        '<p class="meta">Error map: <span class="swatch" style="background: rgb(230,30,30)"></span>wrong '
        '<span class="swatch" style="background: rgb(40,40,40)"></span>right '
        '<span class="swatch" style="background: #fff"></span>ignored. Every image\'s scores: '
        '<a href="../per_image.csv">per_image.csv</a>.</p>',
        *rows,
    ])
    return write_page(directory / "index.html", "segdense evaluation report", body)
