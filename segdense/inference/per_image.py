"""Per-image scores during evaluation (pixel accuracy and per-class IoU of every image) and the K worst images
kept for a gallery. Wraps the evaluation's loader and ``infer`` callable, as :class:`PredictionSaver` does."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from segdense.metrics import SegmentationMetrics, metrics_from_confusion
from segdense.tasks import MulticlassTask, Task

from .draw import input_picture


@dataclass
class ImageScore:
    """One image's scores: ``iou`` per class (NaN where the class is in neither label nor prediction)."""

    index: int
    name: str
    pixels: int  # labelled pixels
    pixel_acc: float
    iou: list[float]

    @property
    def miou(self) -> float:
        valid = [v for v in self.iou if not math.isnan(v)]
        return sum(valid) / len(valid) if valid else float("nan")


@dataclass
class GalleryItem:
    """A kept image: RGB uint8 (H, W, 3), label and prediction (H, W) (multilabel (C, H, W)) at the label
    resolution."""

    score: ImageScore
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray


def image_scores(prediction: torch.Tensor, label: torch.Tensor, task: Task | int, ignore_index: int = 255):
    """(labelled pixels, pixel accuracy, IoU list per scored class) of one prediction against its label, counted as
    ``task`` counts (:class:`~segdense.metrics.SegmentationMetrics`; a number of classes: multiclass). Multilabel:
    labelled (pixel, class) entries and the share of them predicted right."""
    if isinstance(task, int):
        task = MulticlassTask([str(i) for i in range(task)], ignore_index=ignore_index)
    metrics = SegmentationMetrics(task.num_classes, task=task)
    metrics.update(prediction[None], label[None])
    scores = metrics_from_confusion(metrics.confusion)
    pixels = int((label != task.ignore_index).sum())
    return pixels, scores["aAcc"] if pixels else float("nan"), [c["IoU"] for c in scores["per_class"]]


class PerImageRecorder:
    """``recorder.wrap(loader)`` and ``recorder`` (in place of ``infer``) give :attr:`scores` for every image and
    :meth:`worst` (lowest mIoU first) for the ``keep`` worst, with their image as a picture (:func:`input_picture`
    with ``scaling``). ``indices``: the dataset index of each image in the order the loader yields them (default
    0, 1, 2, ...; a process's shard under ``torch.distributed``); :meth:`part` and :meth:`merge` bring the
    processes' records together."""

    def __init__(self, infer: Callable, dataset, task: Task, keep: int = 8, scaling=None,
                 indices: Sequence[int] | None = None):
        self.infer, self.dataset, self.task, self.keep = infer, dataset, task, keep
        self.indices = indices
        self.scaling = scaling  # the eval pipeline's InputScaling: the kept images are shown in the file's units
        self.scores: list[ImageScore] = []
        self._heap: list[tuple[float, int, GalleryItem]] = []  # (-mIoU, -index, item): the worst stay
        self._batch = None

    def wrap(self, loader) -> "BatchTracker":
        return BatchTracker(loader, lambda batch: setattr(self, "_batch", batch))

    def name(self, index: int) -> str:
        return str(self.dataset.describe(index)[0]) if hasattr(self.dataset, "describe") else f"{index:06d}"

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        logits = self.infer(model, images)
        predictions = self.task.labels(logits).cpu()
        masks, sizes = self._batch[1].cpu(), self._batch[2]
        for i, prediction in enumerate(predictions):
            h, w = (int(v) for v in sizes[i])
            index = len(self.scores) if self.indices is None else int(self.indices[len(self.scores)])
            label, pred = masks[i, ..., :h, :w], prediction[..., :h, :w]
            pixels, acc, iou = image_scores(pred, label, self.task)
            score = ImageScore(index, self.name(index), pixels, acc, iou)
            self.scores.append(score)
            self._maybe_keep(score, images[i, :, :h, :w], label, pred)
        return logits

    def _maybe_keep(self, score: ImageScore, image: torch.Tensor, label, prediction) -> None:
        if self.keep <= 0:
            return
        key = -score.miou if not math.isnan(score.miou) else -2.0  # an image with nothing to score sorts last
        if len(self._heap) == self.keep and key <= self._heap[0][0]:
            return
        rgb = input_picture(image, self.scaling)
        item = GalleryItem(score, rgb, label.numpy().astype(np.uint8), prediction.numpy().astype(np.uint8))
        entry = (key, -score.index, item)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def part(self) -> tuple[list[ImageScore], list]:
        """What this process recorded (its scores, its kept images), for :meth:`merge` on rank 0."""
        return self.scores, self._heap

    def merge(self, parts: Sequence[tuple[list[ImageScore], list]]) -> None:
        """Take every process's :meth:`part` as this recorder's own: the scores in dataset order, and the ``keep``
        worst of all kept images, chosen as one process would have chosen them (lowest mIoU, then lowest index)."""
        self.scores = sorted((score for scores, _ in parts for score in scores), key=lambda score: score.index)
        entries = [entry for _, heap in parts for entry in heap]
        self._heap = heapq.nlargest(self.keep, entries, key=lambda entry: entry[:2])
        heapq.heapify(self._heap)

    def worst(self) -> list[GalleryItem]:
        """The kept images, worst (lowest mIoU) first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


class BatchTracker:
    """A loader that hands every batch to ``on_batch`` before yielding it: lets an ``infer`` wrapper see the masks
    and sizes of the images it is given."""

    def __init__(self, loader, on_batch: Callable):
        self.loader, self.on_batch = loader, on_batch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            self.on_batch(batch)
            yield batch
