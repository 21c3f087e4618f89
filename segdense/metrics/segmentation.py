"""Semantic-segmentation metrics accumulated over a whole dataset (and across processes), for the multiclass,
binary and multilabel tasks (:mod:`segdense.tasks`).

The confusion matrix is one ``torch.bincount`` of ``target * C + prediction`` over the labelled pixels, as in
torchvision's segmentation references and mmseg (the tests check it against torchmetrics' ``MulticlassConfusionMatrix``;
importing torchmetrics costs each process about 2 s and loads torchvision, torch._dynamo and scipy, which was a third of
a sharded evaluation's start-up). Under ``torch.distributed`` the processes' integer matrices are summed with one
``all_reduce``, so the scores equal one process's on all the images exactly. The scores follow mmseg: a class absent
from both the labels and the predictions has an undefined IoU and is left out of the means.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..tasks import MulticlassTask, Task


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 pixel counts, rows the target class and columns the predicted one, over the
    pixels whose target is not ``ignore_index``. ``prediction`` and ``target`` hold class indices of one shape;
    predictions must lie in ``[0, num_classes)``."""
    labelled = target != ignore_index
    index = target[labelled].long() * num_classes + prediction[labelled].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def label_confusion(prediction: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """(C, 2, 2) int64 counts of (truth, prediction) per class for (N, C, H, W) 0/1 labels, over the entries whose
    target is not ``ignore_index``: ``[c, 1, 1]`` true positives, ``[c, 0, 1]`` false positives, ``[c, 1, 0]``
    false negatives."""
    channels = target.shape[1]
    labelled = target != ignore_index
    classes = torch.arange(channels, device=target.device).view(1, -1, *([1] * (target.dim() - 2)))
    index = (classes * 4 + target.long() * 2 + prediction.long())[labelled]
    return torch.bincount(index, minlength=channels * 4).reshape(channels, 2, 2)


def class_counts(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true positives, false positives, false negatives) per scored class, as float64, from a (C, C) multiclass
    matrix or (C, 2, 2) per-class matrices."""
    cm = confusion.double()
    if cm.dim() == 3:
        return cm[:, 1, 1], cm[:, 0, 1], cm[:, 1, 0]
    tp = cm.diag()
    return tp, cm.sum(0) - tp, cm.sum(1) - tp


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """numerator / denominator; 0 where the denominator is 0, NaN where the class is ``absent``."""
    value = torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
    return torch.where(absent, torch.full_like(value, float("nan")), value)


def metrics_from_confusion(confusion: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """Scores from a (true, predicted) confusion matrix, or per-class (C, 2, 2) matrices: ``mIoU``, ``mDice``,
    ``mPrecision``, ``mRecall``, ``mAcc``, ``aAcc`` and ``per_class`` (name, IoU, Dice, Precision, Recall, Acc).
    ``Acc`` is mmseg's per-class accuracy: the recall, NaN where the class is never labelled."""
    tp, fp, fn = class_counts(confusion)
    absent = tp + fp + fn == 0
    scores = {"IoU": _ratio(tp, tp + fp + fn, absent), "Dice": _ratio(2 * tp, 2 * tp + fp + fn, absent),
              "Precision": _ratio(tp, tp + fp, absent), "Recall": _ratio(tp, tp + fn, absent),
              "Acc": _ratio(tp, tp + fn, tp + fn == 0)}
    correct, total = confusion.diagonal(dim1=-2, dim2=-1).sum().double(), confusion.sum().double()
    names = class_names or [str(i) for i in range(tp.numel())]
    return {
        **{f"m{key}": _nanmean(values) for key, values in scores.items()},
        "aAcc": float(correct / total) if total > 0 else float("nan"),
        "per_class": [{"name": name, **{key: float(values[i]) for key, values in scores.items()}}
                      for i, name in enumerate(names)],
    }


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else float("nan")


def _count_classes(task: Task, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return confusion_matrix(prediction, target, task.num_classes, task.ignore_index)


def _count_labels(task: Task, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return label_confusion(task.label_target(prediction), task.label_target(target), task.ignore_index)


def _label_shape(task: Task) -> tuple[int, ...]:
    return (len(task.scored_classes), 2, 2)


# How each task counts, and the shape of its counts: one (C, C) matrix, or a (C, 2, 2) matrix per scored class
# (the one place that dispatches on the task's name, as torchmetrics' ``task=``).
_COUNTERS = {"multiclass": (_count_classes, lambda task: (task.num_classes, task.num_classes)),
             "binary": (_count_labels, _label_shape), "multilabel": (_count_labels, _label_shape)}


class SegmentationMetrics:
    """Accumulates a confusion matrix over batches of (logits or labels, target) pairs; pixels (multilabel: labels)
    marked ``ignore_index`` are skipped. ``task`` (default: multiclass over ``num_classes``) says how logits become
    labels and what is counted."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, ignore_index: int = 255,
                 device: torch.device | str = "cpu", task: Task | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        if task is None:
            task = MulticlassTask(class_names or [str(i) for i in range(num_classes)], ignore_index=ignore_index)
            self.class_names = class_names
        elif task.num_classes != num_classes:
            raise ValueError(f"task {task.name} has {task.num_classes} classes, the metrics were asked for {num_classes}")
        else:
            self.class_names = task.scored_classes
        self.task, self.num_classes, self.ignore_index = task, num_classes, task.ignore_index
        self._count, shape = _COUNTERS[task.name]
        self.confusion = torch.zeros(shape(task), dtype=torch.int64, device=device)

    def _check_prediction(self, labels: torch.Tensor) -> None:
        limit = self.task.label_values
        low, high = (int(v) for v in torch.aminmax(labels)) if labels.numel() else (0, 0)  # one pass, both bounds
        if low < 0 or high >= limit:
            raise ValueError(f"prediction holds class indices outside [0, {limit}): {low}..{high}")

    def _check_target(self, labels: torch.Tensor) -> None:
        limit = self.task.label_values
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= limit))
        if bad.any():
            values = sorted(set(labels[bad].unique().tolist()))
            raise ValueError(f"target holds labels {values[:10]} outside [0, {limit}) and not {self.ignore_index}")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction``: (N, C, H, W) float logits, or labels in the target's layout; ``target``: (N, H, W) class
        indices (multiclass, binary) or (N, C, H, W) 0/1 labels (multilabel)."""
        if prediction.is_floating_point():
            prediction = self.task.labels(prediction)
        else:
            self._check_prediction(prediction)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        self._check_target(target)
        counts = self._count(self.task, prediction, target.to(prediction.device))
        self.confusion += counts.to(self.confusion.device)

    def compute(self) -> dict:
        """Scores and ``confusion`` over everything every process has seen. Under ``torch.distributed`` it is a
        collective: every process calls it once, also one that saw no image."""
        confusion = self.confusion.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(confusion)
        confusion = confusion.cpu()
        result = metrics_from_confusion(confusion, self.class_names)
        result["confusion"] = confusion.tolist()
        return result

    def reset(self) -> None:
        self.confusion.zero_()


def format_metrics_table(result: dict) -> str:
    """A per-class IoU/Dice/precision/recall table followed by the summary line, for terminals and logs."""
    width = max([len(c["name"]) for c in result["per_class"]] + [5])
    keys = [key for key in ("IoU", "Dice", "Precision", "Recall") if key in result["per_class"][0]]
    header = "".join(f"  {key[:6]:>6}" for key in keys)
    lines = [f"{'class':<{width}}{header}", "-" * (width + 8 * len(keys))]
    for c in result["per_class"]:
        lines.append(f"{c['name']:<{width}}" + "".join(f"  {_pct(c[key])}" for key in keys))
    lines.append("-" * (width + 8 * len(keys)))
    means = [f"m{key} {_pct(result['m' + key])}" for key in keys if "m" + key in result]
    lines.append("  ".join(means + [f"mAcc {_pct(result['mAcc'])}", f"aAcc {_pct(result['aAcc'])}"]))
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "   n/a" if v is None or math.isnan(v) else f"{100 * v:6.2f}"
