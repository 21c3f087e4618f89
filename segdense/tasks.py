"""The segmentation task, one object: multiclass (softmax, one class per pixel), binary (one logit, a sigmoid and a
threshold) or multilabel (C logits, independent sigmoids, any number of labels per pixel).

A task knows how many output channels the model has, its activation, how logits become labels, the shape and
values of the targets it trains on, and the mode (``task.name``) that losses and metrics take, as smp's loss
``mode`` and torchmetrics' ``task=``. Code that handles model outputs asks the task; it never names one.

Targets: multiclass and binary masks are (N, H, W) class indices (binary: 0 background, 1 foreground); multilabel
masks are (N, C, H, W) of 0/1, one band per class. ``ignore_index`` (255) marks pixels, or for multilabel single
labels, that carry no label.

>>> task = build_task("binary", class_names=["background", "vessel"], threshold=0.4)
>>> task.out_channels, task.scored_classes
(1, ['vessel'])
"""
from __future__ import annotations

import abc
from typing import Sequence

import torch

from .errors import ConfigError

IGNORE_INDEX = 255


def class_argmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``torch.argmax(logits, dim)``: the index (int64) of the largest value along ``dim``, the first of equal
    maxima, NaN counted as the largest. On CPU, where the class dimension is not the innermost one (logits of shape
    (N, C, H, W) or (C, H, W) in the contiguous layout), torch's reduction strides across memory and takes 4-15x
    the time of a running maximum over the classes, one elementwise pass per class; that is what this computes,
    and it hands pixels holding a NaN back to ``torch.argmax``."""
    if logits.device.type != "cpu" or logits.stride(dim) == 1 or logits.shape[dim] > 32767 or logits.is_complex():
        return logits.argmax(dim)
    classes = logits.movedim(dim, 0)
    best = classes[0]
    index = torch.zeros(best.shape, dtype=torch.uint8 if classes.shape[0] <= 256 else torch.int16)
    for k in range(1, classes.shape[0]):
        index.masked_fill_(classes[k] > best, k)
        best = torch.maximum(best, classes[k])
    if best.dtype.is_floating_point and bool(best.isnan().any()):
        return logits.argmax(dim)
    return index.long()


class Task(abc.ABC):
    """What differs between segmentation tasks. ``class_names`` are the dataset's classes (binary: background and
    foreground); ``threshold`` turns a sigmoid probability into a label (binary and multilabel)."""

    name: str
    default_loss = "binary_cross_entropy"  # the loss term when none is configured
    can_choose_threshold = False  # whether ``threshold="auto"`` (chosen on validation) applies

    def __init__(self, class_names: Sequence[str], threshold: float | str = 0.5, ignore_index: int = IGNORE_INDEX):
        self.class_names = [str(n) for n in class_names]
        self.choose_threshold = threshold == "auto"  # training picks it on validation (segdense.metrics.threshold)
        if self.choose_threshold and not self.can_choose_threshold:
            raise ConfigError(f"task.threshold=auto (chosen on validation) is for task=binary; task {self.name} "
                              "takes a number in (0, 1)")
        try:
            value = 0.5 if self.choose_threshold else float(threshold)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 < value < 1.0:
            raise ConfigError(f"task.threshold must lie in (0, 1) or be auto, got {threshold!r}")
        self.threshold = value
        self.ignore_index = int(ignore_index)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def out_channels(self) -> int:
        """Channels of the model's logits."""
        return self.num_classes

    @property
    def scored_classes(self) -> list[str]:
        """The classes metrics report, one per confusion count."""
        return list(self.class_names)

    @property
    def target_dims(self) -> int:
        """Dimensions of a batch of targets: 3 for (N, H, W), 4 for (N, C, H, W)."""
        return 3

    @property
    def label_values(self) -> int:
        """A target value is a label in ``[0, label_values)`` or ``ignore_index``."""
        return 2

    @abc.abstractmethod
    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from (N, C, H, W) logits."""

    @abc.abstractmethod
    def labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted labels from (N, C, H, W) logits, in the targets' layout (int64)."""

    def label_target(self, target: torch.Tensor) -> torch.Tensor:
        """``target`` as (N, C, H, W) per-label 0/1/ignore, the layout of the sigmoid losses."""
        return target

    def to_config(self) -> dict:
        """What a checkpoint stores to rebuild the task (with the class names)."""
        return {"name": self.name, "threshold": self.threshold}

    def check_target(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """One clear error for logits and targets that do not fit this task."""
        if logits.dim() != 4:
            raise ValueError(f"expected logits of shape (N, C, H, W), got {tuple(logits.shape)}")
        if logits.shape[1] != self.out_channels:
            raise ValueError(f"logits have {logits.shape[1]} channels but task {self.name} with "
                             f"{self.num_classes} classes needs {self.out_channels}")
        expected = (logits.shape[0], *([self.num_classes] if self.target_dims == 4 else []), *logits.shape[2:])
        if tuple(target.shape) != expected:
            layout = "(N, C, H, W), one band per class" if self.target_dims == 4 else "(N, H, W)"
            raise ValueError(f"target of shape {tuple(target.shape)} does not fit task {self.name}: expected "
                             f"{layout} = {expected}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer labels, got dtype {target.dtype}")
        limit = self.label_values
        bad = (target != self.ignore_index) & ((target < 0) | (target >= limit))
        if bool(bad.any()):
            values = torch.unique(target[bad])
            raise ValueError(f"target of task {self.name} holds values outside [0, {limit}) other than "
                             f"ignore_index={self.ignore_index}: {values[:10].tolist()}"
                             f"{' ...' if values.numel() > 10 else ''}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.class_names}, threshold={self.threshold})"


class MulticlassTask(Task):
    """One class per pixel: C logits, softmax, argmax."""

    name = "multiclass"
    default_loss = "cross_entropy"

    @property
    def label_values(self):
        return self.num_classes

    def activation(self, logits):
        return logits.softmax(1)

    def labels(self, logits):
        return class_argmax(logits, 1)


class BinaryTask(Task):
    """Foreground or not: one logit, sigmoid, probability above ``threshold``. Masks hold 0 and 1."""

    name = "binary"
    can_choose_threshold = True

    def __init__(self, class_names: Sequence[str], threshold: float | str = 0.5, ignore_index: int = IGNORE_INDEX):
        if len(class_names) != 2:
            raise ConfigError(f"task=binary needs two class names (background, foreground), got {list(class_names)}")
        super().__init__(class_names, threshold, ignore_index)

    @property
    def out_channels(self):
        return 1

    @property
    def scored_classes(self):
        return [self.class_names[1]]

    def activation(self, logits):
        return logits.sigmoid()

    def labels(self, logits):
        return (logits[:, 0].sigmoid() > self.threshold).long()

    def label_target(self, target):
        return target.unsqueeze(1)


class MultilabelTask(Task):
    """Any number of classes per pixel: C logits, independent sigmoids, each probability above ``threshold``.
    Masks have one 0/1 band per class."""

    name = "multilabel"

    @property
    def target_dims(self):
        return 4

    def activation(self, logits):
        return logits.sigmoid()

    def labels(self, logits):
        return (logits.sigmoid() > self.threshold).long()


TASKS = {cls.name: cls for cls in (MulticlassTask, BinaryTask, MultilabelTask)}


def build_task(name: str = "multiclass", class_names: Sequence[str] = (), threshold: float | str = 0.5,
               ignore_index: int = IGNORE_INDEX) -> Task:
    """The task called ``name`` (multiclass, binary, multilabel) over the dataset's ``class_names``; binary takes
    ``threshold="auto"`` (0.5 until a validation chooses it)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    if not class_names:
        raise ConfigError(f"task {name} needs the dataset's class names, got none")
    return TASKS[name](class_names, threshold=threshold, ignore_index=ignore_index)
