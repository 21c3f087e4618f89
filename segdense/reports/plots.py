"""Headless matplotlib charts written as PNG files: class frequencies, confusion matrices, training curves,
per-class IoU. Figures are built with the object API and the Agg canvas, so no display and no pyplot state."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from segdense.inference.writers import write_png


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render on the Agg canvas and write an RGB PNG atomically."""
    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    del canvas
    buffer.seek(0)
    return write_png(path, np.asarray(Image.open(buffer).convert("RGB")))


def _bar_width(n_groups: int) -> float:
    return 0.8 / max(n_groups, 1)


def class_frequency_chart(class_names: Sequence[str], pixel_share: Mapping[str, Sequence[float]],
                          image_share: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Grouped bars per class and split: share of labelled pixels (top) and share of images holding it (bottom)."""
    n = len(class_names)
    fig = Figure(figsize=(max(6.0, 0.5 * n * max(len(pixel_share), 1) + 2), 6.5))
    x = np.arange(n)
    width = _bar_width(len(pixel_share))
    for ax, values, label in ((fig.add_subplot(2, 1, 1), pixel_share, "share of labelled pixels"),
                              (fig.add_subplot(2, 1, 2), image_share, "share of images with the class")):
        for k, (split, v) in enumerate(values.items()):
            ax.bar(x + (k - (len(values) - 1) / 2) * width, 100 * np.asarray(v, dtype=float), width, label=split)
        ax.set_ylabel(f"{label} (%)")
        ax.set_xticks(x, list(class_names), rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle("Class frequencies per split")
    fig.tight_layout()
    return _save(fig, path)


def confusion_chart(confusion, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction) with class labels on both axes.
    The figure grows with the number of classes up to 60 of them (then it stays at that size, with smaller labels:
    ADE20K's 150 classes would otherwise make a 6,600-pixel image) and writes the percentages in the cells up to 30
    classes."""
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    side = max(5.0, 0.42 * min(n, 60) + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(100 * norm, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the ground-truth row")
    label_size = None if n <= 60 else max(3.0, 10.0 * 60 / n)
    ax.set_xticks(np.arange(n), list(class_names), rotation=90, fontsize=label_size)
    ax.set_yticks(np.arange(n), list(class_names), fontsize=label_size)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if n <= 30:
        size = 9 if n <= 10 else 7 if n <= 20 else 5.5
        for i in range(n):
            for j in range(n):
                if rows[i, 0] > 0 and (norm[i, j] >= 0.005 or i == j):
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=size,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix (row-normalised, %)")
    fig.tight_layout()
    return _save(fig, path)


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
               title: str, ylabel: str, log_y: bool = False, percent: bool = False) -> Path:
    """One line per named (x, y) series against iteration."""
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in series.items():
        y = 100 * np.asarray(y, dtype=float) if percent else np.asarray(y, dtype=float)
        ax.plot(list(x), y, marker="o" if len(x) <= 20 else None, markersize=3, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def per_class_chart(class_names: Sequence[str], values: Sequence[float], path: str | os.PathLike, *,
                    title: str, xlabel: str = "IoU (%)") -> Path:
    """Horizontal bars, one per class (NaN: the class never occurred, drawn as an empty bar and marked n/a)."""
    n = len(class_names)
    fig = Figure(figsize=(7.0, max(2.5, 0.3 * n + 1.2)))
    ax = fig.add_subplot(1, 1, 1)
    v = 100 * np.asarray(values, dtype=float)
    y = np.arange(n)
    ax.barh(y, np.nan_to_num(v), color="tab:blue")
    for i, value in enumerate(v):
        ax.text(0 if np.isnan(value) else value, i, " n/a" if np.isnan(value) else f" {value:.1f}", va="center",
                fontsize=8)
    ax.set_yticks(y, list(class_names))
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def ema(values: Sequence[float], span: int) -> np.ndarray:
    """Exponential moving average with ``alpha = 2 / (span + 1)``, bias-corrected at the start (as TensorBoard's
    smoothing is); NaN entries (steps without a loss) are skipped and stay NaN."""
    alpha, average, weight = 2.0 / (span + 1), 0.0, 0.0
    out = np.full(len(values), np.nan)
    for i, value in enumerate(np.asarray(values, dtype=float)):
        if np.isnan(value):
            continue
        average, weight = (1 - alpha) * average + alpha * value, (1 - alpha) * weight + alpha
        out[i] = average / weight
    return out


def loss_curve_chart(losses: Sequence[float], validation: tuple[Sequence[int], Sequence[float]],
                     path: str | os.PathLike, *, span: int) -> Path:
    """The loss at every iteration (1, 2, ...; thin), its EMA over about ``span`` iterations (bold), and the
    validation mIoU at its iterations as points on a second axis, on the same iteration axis."""
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(1, len(losses) + 1)
    ax.plot(x, np.asarray(losses, dtype=float), color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per iteration")
    ax.plot(x, ema(losses, span), color="tab:blue", linewidth=2.0, label=f"EMA (span {span} iterations)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    its, miou = validation
    if len(its):
        val_ax = ax.twinx()
        val_ax.plot(list(its), 100 * np.asarray(miou, dtype=float), "o", color="tab:green", label="validation mIoU")
        val_ax.set_ylabel("validation mIoU (%)")
        more_handles, more_labels = val_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title("Training loss at every iteration, with validation")
    fig.tight_layout()
    return _save(fig, path)
