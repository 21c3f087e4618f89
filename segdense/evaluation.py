"""Evaluating a rebuilt model on a dataset with any inference strategy, with the loop training validates with
(:func:`segdense.runtime.evaluate_loader`), and writing ``metrics.json``, ``confusion.png``, optionally predictions
and the HTML report. It sits above ``inference`` and ``reports``, which it brings together.

Under ``torch.distributed`` (``tools/eval.py`` under torchrun or srun) each process evaluates its own whole batches
of the dataset (:class:`segdense.data.loader.ShardSampler`, as training's validation does), the confusion matrices
are summed with one ``all_reduce``, per-image rows and the worst images are gathered to rank 0, which writes every
file but the predictions: each process writes those of its own images.

Metrics are computed at the resolution of the labels the eval pipeline yields (the default pipeline only
normalises the image, so the original label resolution). Batches are padded bottom/right by ``pad_collate``;
padded pixels carry label 255 and are ignored, and slide/TTA run on the padded batch (see ``tta.py``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from segdense.data import build_dataloader
from segdense.data.cityscapes import LABELS
from segdense.errors import UserError
from segdense.inference.draw import colorize
from segdense.inference.files import output_names
from segdense.inference.label_files import LabelFiles
from segdense.inference.loading import ModelBundle
from segdense.inference.per_image import BatchTracker, PerImageRecorder
from segdense.inference.tta import describe_infer
from segdense.inference.writers import atomic_write_files, check_writable_dir, write_json, write_png
from segdense.metrics import SegmentationMetrics
from segdense.reports.evaluation import has_one_matrix, write_eval_report, write_per_image_csv
from segdense.reports.plots import confusion_chart
from segdense.runtime import evaluate_loader, gather_to_main, is_main_process
from segdense.tasks import Task

logger = logging.getLogger("segdense.eval")


class DatasetMismatchError(UserError, ValueError):
    """The dataset's classes do not match the model's."""


def check_dataset_classes(bundle: ModelBundle, dataset, dataset_name: str) -> None:
    """One clear error when ``dataset`` has another number of classes than the model predicts; a warning when
    only the names differ."""
    names = list(getattr(dataset, "class_names", []))
    if len(names) != bundle.num_classes:
        raise DatasetMismatchError(
            f"dataset {dataset_name!r} has {len(names)} classes but the checkpoint {bundle.source} predicts "
            f"{bundle.num_classes} ({', '.join(bundle.class_names[:8])}{', ...' if bundle.num_classes > 8 else ''}); "
            "evaluate it on the dataset it was trained on, or one with the same classes"
        )
    if names != bundle.class_names:
        logger.warning("dataset %r names its classes %s, the checkpoint %s; comparing by index",
                       dataset_name, names, bundle.class_names)


def report_left_out(dataset, dataset_name: str) -> list[dict]:
    """The dataset's files that have no partner (an image without a mask, a mask without an image), which the
    evaluation cannot use: logged as a warning with their count and names, and returned for ``metrics.json``."""
    left_out = [{"file": str(path), "problem": problem} for path, problem in getattr(dataset, "unpaired", [])]
    if left_out:
        shown = "\n  ".join(f"{item['file']}: {item['problem']}" for item in left_out[:20])
        more = f"\n  ... and {len(left_out) - 20} more (all are listed in metrics.json)" if len(left_out) > 20 else ""
        logger.warning("%d file(s) of dataset %r are left out of the evaluation, which covers the %d complete "
                       "pairs only:\n  %s%s", len(left_out), dataset_name, len(dataset), shown, more)
    return left_out


def cityscapes_train_to_label_ids() -> np.ndarray:
    """trainId → labelId lookup (256 entries; 255 → 0 'unlabeled'), for the official evaluation server."""
    table = np.zeros(256, dtype=np.uint8)
    for _, label_id, train_id, _ in LABELS:
        if train_id != 255 and label_id >= 0:
            table[train_id] = label_id
    return table


def prediction_names(dataset) -> list[str]:
    """A unique output name per sample: the image's path below the folder all images share, without extension
    (``city/a_leftImg8bit``), as :func:`segdense.inference.files.output_names` names inference outputs; the
    index (``000042``) for samples that are not files."""
    images = [dataset.describe(i)[0] if hasattr(dataset, "describe") else "" for i in range(len(dataset))]
    if not images or not all(image and Path(image).is_file() for image in images):
        return [f"{i:06d}" for i in range(len(dataset))]
    return [name.as_posix() for name in output_names([Path(image) for image in images], None)]


class PredictionSaver:
    """Wraps a loader and an ``infer`` callable so the evaluation loop also writes every prediction (cropped to
    the sample's own size, labelled as ``task`` labels) as ``color/<name>.png`` and ``labels/<name>`` + the task's
    label suffixes (:class:`~segdense.inference.label_files.LabelFiles`: ``.png``, multilabel ``.tif``) under
    ``directory``, where ``name`` keeps the image's sub-folders (:func:`prediction_names`). ``indices``: the dataset
    index of each image in the order the loader yields them (default 0, 1, 2, ...)."""

    def __init__(self, infer: Callable, dataset, directory: Path, palette, task: Task,
                 label_table: np.ndarray | None = None, indices: Sequence[int] | None = None):
        self.infer, self.dataset, self.directory = infer, dataset, Path(directory)
        self.palette, self.label_table, self.task = palette, label_table, task
        self.label_files = LabelFiles(task, palette)
        self.names = prediction_names(dataset)
        self.indices = range(len(dataset)) if indices is None else indices
        self._sizes: torch.Tensor | None = None
        self._next_index = 0

    def wrap(self, loader) -> BatchTracker:
        return BatchTracker(loader, lambda batch: setattr(self, "_sizes", batch[2]))

    def name(self, position: int) -> str:
        """The output name of the ``position``-th image the loader yields."""
        return self.names[self.indices[position]]

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        logits = self.infer(model, images)
        predictions = self.task.labels(logits).to(torch.uint8).cpu().numpy()
        for i, prediction in enumerate(predictions):
            h, w = (int(v) for v in self._sizes[i])
            labels = prediction[..., :h, :w]
            name = self.name(self._next_index + i)
            write_png(self.directory / "color" / f"{name}.png", colorize(labels, self.palette))
            raw = self.label_table[labels] if self.label_table is not None else labels
            stem = self.directory / "labels" / name
            atomic_write_files({stem.with_name(stem.name + suffix): data
                                for suffix, data in zip(self.label_files.suffixes, self.label_files.encode(raw))})
        self._next_index += len(predictions)
        return logits


def evaluate_model(bundle: ModelBundle, dataset, infer: Callable, device: torch.device,
                   amp_dtype: torch.dtype | None = None, batch_size: int = 4, num_workers: int = 0,
                   output_dir: str | Path | None = None, save_predictions: str | Path | None = None,
                   dataset_name: str = "", progress: bool = True, channels_last: bool = False,
                   report: bool = False, report_images: int = 8) -> dict:
    """Metrics of ``bundle.model`` on ``dataset`` (``mIoU``, ``mAcc``, ``aAcc``, ``per_class``, ``confusion``).
    Files without a partner (``dataset.unpaired``) cannot be scored: they are logged and listed in
    ``metrics.json`` (``num_left_out``, ``left_out``). With ``output_dir``: ``metrics.json`` and ``confusion.png``
    there. With ``save_predictions``: coloured and raw label PNGs (labelIds for Cityscapes). With ``report``
    (needs ``output_dir``): ``per_image.csv`` and ``report/index.html`` with the ``report_images`` worst images
    (:mod:`segdense.reports.evaluation`). Under ``torch.distributed`` every process calls it and gets the metrics
    of the whole dataset; rank 0 writes the files (see the module's text)."""
    check_dataset_classes(bundle, dataset, dataset_name)
    if report and output_dir is None:
        raise ValueError("report=true needs an output directory (output_dir=DIR)")
    left_out = report_left_out(dataset, dataset_name)
    if output_dir is not None:
        check_writable_dir(output_dir)
    if save_predictions is not None:
        check_writable_dir(save_predictions, "save_predictions")
    model = bundle.model.to(device).eval()
    loader = build_dataloader(dataset, batch_size, train=False, num_workers=num_workers)
    order = list(loader.sampler)  # the dataset indices this process evaluates, in the loader's order
    description = describe_infer(infer)  # before the wrappers below, which describe_infer does not know
    if save_predictions is not None:
        table = cityscapes_train_to_label_ids() if dataset_name == "cityscapes" else None
        saver = PredictionSaver(infer, dataset, Path(save_predictions), bundle.palette, bundle.task, table,
                                indices=order)
        loader, infer = saver.wrap(loader), saver
    recorder = None
    if report:
        recorder = PerImageRecorder(infer, dataset, bundle.task, keep=report_images, indices=order,
                                    scaling=getattr(dataset, "input_scaling", None))
        loader, infer = recorder.wrap(loader), recorder
    task = bundle.task
    metrics = SegmentationMetrics(bundle.num_classes, bundle.class_names, device=device, task=task)
    result = evaluate_loader(model, loader, metrics, device, amp_dtype=amp_dtype, channels_last=channels_last,
                             infer=infer, progress=progress, labels=task.labels)
    parts = gather_to_main(recorder.part()) if recorder is not None else None
    if output_dir is not None and is_main_process():
        info = {"checkpoint": bundle.source, "dataset": dataset_name, "num_images": len(dataset),
                "num_left_out": len(left_out), "left_out": left_out, "infer": description}
        write_outputs(Path(output_dir), result, info, bundle, recorder, parts)
    return result


def write_outputs(output_dir: Path, result: dict, info: dict, bundle: ModelBundle,
                  recorder: PerImageRecorder | None = None, parts: list | None = None) -> None:
    """``metrics.json`` (``info`` and ``result``) and ``confusion.png``; with a ``recorder`` (and every process's
    :meth:`~PerImageRecorder.part`), ``per_image.csv`` and the report, whose path goes into ``result``."""
    write_json(output_dir / "metrics.json", {**info, **result})
    if has_one_matrix(result):  # not binary and multilabel's (C, 2, 2) counts
        confusion_chart(result["confusion"], bundle.class_names, output_dir / "confusion.png")
    if recorder is None:
        return
    recorder.merge(parts)
    write_per_image_csv(output_dir / "per_image.csv", recorder.scores, bundle.task.scored_classes)
    about = {"checkpoint": bundle.source, "dataset": info["dataset"] or "-", "images": info["num_images"],
             "inference": info["infer"]}
    result["report"] = str(write_eval_report(output_dir / "report", result, recorder.scores, recorder.worst(),
                                             bundle.class_names, bundle.palette, about))

