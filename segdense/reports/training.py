"""The training report: ``report.html`` in a run directory, with PNGs in ``report/``, from what the run already
wrote — ``metrics.json`` (validation history, per-class IoU), ``loss_per_iteration.f32`` (the loss at every
iteration) and the TensorBoard events (loss terms, lr, validation image | ground truth | prediction grids)."""
from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from segdense.engine.loss_log import read_loss_log
from segdense.inference.writers import write_png

from .html import esc, image, percent, table, write_page
from .plots import line_chart, loss_curve_chart, per_class_chart

NOT_LOSSES = {"lr", "images_per_second", "max_memory_allocated_MiB"}


def read_events(run_dir: Path) -> tuple[dict[str, tuple[list[int], list[float]]], dict[int, np.ndarray]]:
    """(scalars by tag as (steps, values), validation grids by iteration) from ``run_dir/tensorboard``; empty when
    the run wrote no events (logger without tensorboard)."""
    folder = run_dir / "tensorboard"
    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        return {}, {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    quiet = logging.getLogger("tensorboard")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its INFO "No path found after ..." reads like a problem; it is not
    try:
        events.Reload()
    finally:
        quiet.setLevel(level)
    tags = events.Tags()
    scalars = {}
    for tag in tags.get("scalars", []):
        points = sorted({e.step: e.value for e in events.Scalars(tag)}.items())  # a resumed run repeats steps
        scalars[tag] = ([s for s, _ in points], [v for _, v in points])
    grids = {}
    if "val/image_gt_pred" in tags.get("images", []):
        for e in events.Images("val/image_gt_pred"):
            grids[e.step] = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
    return scalars, grids


def write_training_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/report/*.png``; returns the page. Needs ``metrics.json``."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: not a segdense run directory, or no validation has "
                                "run yet (the report is made from metrics.json and tensorboard/)")
    metrics = json.loads(metrics_path.read_text())
    history = metrics.get("history", [])
    names = [c["name"] for c in metrics.get("last", {}).get("per_class", [])]
    scalars, grids = read_events(run_dir)
    out = run_dir / "report"
    best_it = int(metrics.get("best_iteration", 0))
    parts = [f'<p class="meta">run: {esc(run_dir.resolve())} · {_describe(run_dir)}</p>',
             f"<p>Best mIoU <b>{percent(metrics.get('best_mIoU', math.nan))}</b> at iteration {best_it} "
             f"(of {metrics.get('iteration')} run).</p>"]

    parts += _loss_section(scalars, read_loss_log(run_dir), history, out) + _validation_section(history, out)
    best_iou = _per_class_at(best_it, history, scalars, names, metrics)
    if best_iou is not None:
        per_class_chart(names, best_iou, out / "per_class_iou.png", title=f"Per-class IoU at iteration {best_it}")
        parts += [f"<h2>Per-class IoU at the best checkpoint (iteration {best_it})</h2>",
                  image("report/per_class_iou.png", "per-class IoU at the best checkpoint"),
                  table(["class", "IoU"], [[n, percent(v)] for n, v in zip(names, best_iou)], attrs='id="per-class"')]
    parts += _predictions_section(grids, best_it, out)
    return write_page(run_dir / "report.html", "segdense training report", "\n".join(parts))


def _loss_section(scalars: dict, per_iteration, history: list[dict], out: Path) -> list[str]:
    parts = ["<h2>Training loss and learning rate</h2>"]
    if len(per_iteration):
        span = min(200, max(5, len(per_iteration) // 20))
        validation = ([h["iteration"] for h in history], [h["mIoU"] for h in history])
        loss_curve_chart(per_iteration, validation, out / "loss.png", span=span)
        parts.append(image("report/loss.png", "loss at every iteration with its moving average, and validation mIoU"))
    # train/total is the criterion's name for train/loss (the weighted sum): drawn once, as "total"
    losses = {("total (weighted)" if tag == "train/loss" else tag.split("/", 1)[1]): v for tag, v in scalars.items()
              if tag.startswith("train/") and tag.split("/", 1)[1] not in NOT_LOSSES | {"total"}}
    if not losses:
        return parts + ["<p>No TensorBoard events in this run (logger without tensorboard): no loss-term or lr curves.</p>"]
    terms_file = "loss_terms.png" if len(per_iteration) else "loss.png"
    terms = [name for name in losses if name != "total (weighted)"]
    if len(terms) > 1 or not len(per_iteration):  # one term is the total the per-iteration chart already draws
        line_chart(losses, out / terms_file, title="Loss terms (unweighted; total = weighted sum)", ylabel="loss",
                   log_y=all(min(y) > 0 for _, y in losses.values()))
        parts.append(image(f"report/{terms_file}", "loss terms against iteration"))
    line_chart({"lr": scalars["train/lr"]}, out / "lr.png", title="Learning rate (first parameter group)",
               ylabel="lr")
    return parts + [image("report/lr.png", "learning rate against iteration")]


def _validation_section(history: list[dict], out: Path) -> list[str]:
    parts = ["<h2>Validation</h2>"]
    if history:
        its = [h["iteration"] for h in history]
        line_chart({k: (its, [h[k] for h in history]) for k in ("mIoU", "mAcc", "aAcc")}, out / "val.png",
                   title="Validation metrics", ylabel="%", percent=True)
        parts += [image("report/val.png", "validation mIoU, mAcc and aAcc against iteration"),
                  table(["iteration", "mIoU", "mAcc", "aAcc"],
                        [[h["iteration"], percent(h["mIoU"]), percent(h["mAcc"]), percent(h["aAcc"])]
                         for h in history], name_columns=0, attrs='id="validation"')]
    return parts


def _predictions_section(grids: dict, best_it: int, out: Path) -> list[str]:
    parts = ["<h2>Validation predictions</h2>"]
    if not grids:
        return parts + ["<p>No validation images in the TensorBoard events (logger without tensorboard).</p>"]
    step = max((s for s in grids if s <= best_it), default=max(grids))
    write_png(out / "val_predictions.png", grids[step])
    return parts + [f'<p class="meta">Iteration {step}: each row is image | ground truth | prediction '
                    "(ignored pixels white).</p>",
                    image("report/val_predictions.png", "validation predictions", width=3 * grids[step].shape[1] // 2)]


def _per_class_at(iteration: int, history, scalars, names, metrics) -> list[float] | None:
    """Per-class IoU at ``iteration``: metrics.json's history, else the TensorBoard scalars, else the last
    validation when it was the best."""
    for h in history:
        if h["iteration"] == iteration and "IoU" in h:
            return [float(v) for v in h["IoU"]]
    if names and all(f"val_IoU/{n}" in scalars for n in names):
        values = []
        for n in names:
            steps, ys = scalars[f"val_IoU/{n}"]
            values.append(ys[steps.index(iteration)] if iteration in steps else math.nan)
        return values
    if metrics.get("iteration") == iteration and metrics.get("last", {}).get("per_class"):
        return [c["IoU"] for c in metrics["last"]["per_class"]]
    return None


def _describe(run_dir: Path) -> str:
    """Model and data in one line, from the run's config.yaml."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return "no config.yaml"
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    try:
        return (f"{cfg.backbone.name} + {cfg.head.name}, output stride {cfg.output_stride}; {cfg.dataset.name}; "
                f"{cfg.iterations} iterations, batch {cfg.batch_size}, lr {cfg.lr}")
    except Exception:  # an older or hand-edited config: the report does not depend on it
        return "config.yaml"
