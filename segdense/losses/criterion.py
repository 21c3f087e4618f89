"""The training criterion: a weighted sum of registered losses, plus an auxiliary-output term."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..tasks import Task
from .base import build_loss, check_inputs, class_weight_arg, list_losses, loss_modes


class Criterion(nn.Module):
    """``criterion(outputs, target) -> (total, logs)``.

    ``outputs`` is a logits tensor or a ``{"out": ..., "aux": ...}`` dict. ``total`` is
    ``sum_i w_i * L_i(out) + aux_weight * sum_i w_i * L_i(aux)``; ``logs`` holds each term's
    unweighted value on ``out`` (keyed by term name), ``"aux"`` (the weighted term sum on the aux
    output, before ``aux_weight``) when an aux output is given, and ``"total"``; all detached.

    With a ``task`` (:mod:`segdense.tasks`) the targets are checked against it, and the sigmoid losses of the
    binary and multilabel tasks get them as (N, C, H, W) labels.
    """

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]], aux_weight: float, ignore_index: int,
                 num_classes: int | None, task: Task | None = None):
        super().__init__()
        self.task = task
        self.names = [name for name, _, _ in terms]
        self.weights = [float(w) for _, w, _ in terms]
        self.losses = nn.ModuleList(loss for _, _, loss in terms)
        self.aux_weight = float(aux_weight)
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def _weighted(self, logits, target, logs=None):
        total = 0.0
        for name, weight, loss in zip(self.names, self.weights, self.losses):
            value = loss.compute(logits, target)
            if logs is not None:
                logs[name] = value.detach()
            total = total + weight * value
        return total

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if self.task is None:
            check_inputs(logits, target, self.ignore_index, self.num_classes)
        else:
            self.task.check_target(logits, target)

    def forward(self, outputs, target: torch.Tensor):
        if isinstance(outputs, Mapping):
            if "out" not in outputs:
                raise ValueError(f"outputs dict must have an 'out' entry, got keys {sorted(outputs)}")
            out, aux = outputs["out"], outputs.get("aux")
        else:
            out, aux = outputs, None
        for logits in (out,) if aux is None else (out, aux):
            self._check(logits, target)
        target = target.long() if self.task is None else self.task.label_target(target.long())
        logs: dict[str, torch.Tensor] = {}
        total = self._weighted(out, target, logs)
        if aux is not None:
            aux_value = self._weighted(aux, target)
            logs["aux"] = aux_value.detach()
            total = total + self.aux_weight * aux_value
        logs["total"] = total.detach()
        return total, logs


def build_criterion(
    terms: Sequence[Mapping] | None = None,
    aux_weight: float = 0.4,
    ignore_index: int = 255,
    num_classes: int | None = None,
    class_weight: Sequence[float] | None = None,
    task: Task | None = None,
) -> Criterion:
    """Build the criterion from a list of terms such as
    ``[{"name": "cross_entropy", "weight": 1.0}, {"name": "dice", "weight": 0.5, "smooth": 1.0}]``
    (every key besides ``name`` and ``weight`` goes to the loss). Default: cross-entropy alone.
    A name used twice is logged as ``name``, ``name_2``, ...

    ``class_weight`` (one number per class) goes to every term, through the argument each loss takes it by
    (``weight``, or ``alpha`` for focal); a term that takes no class weights is an error.

    ``task`` (default: multiclass) decides which losses apply: the softmax losses for multiclass, the sigmoid ones
    (``binary_cross_entropy``, ``sigmoid_dice``, ``sigmoid_focal``, ``lovasz_hinge``) for binary and multilabel;
    the default term is the task's ``default_loss``."""
    mode = "multiclass" if task is None else task.name
    if terms is None:
        terms = [{"name": "cross_entropy" if task is None else task.default_loss, "weight": 1.0}]
    if not terms:
        raise ValueError("build_criterion needs at least one loss term, e.g. [{'name': 'cross_entropy'}]")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
    built, seen = [], {}
    for i, term in enumerate(terms):
        if not isinstance(term, Mapping) or "name" not in term:
            raise ValueError(f"loss term {i} must be a mapping with a 'name' key, got {term!r}")
        kwargs = dict(term)
        name = kwargs.pop("name")
        weight = float(kwargs.pop("weight", 1.0))
        loss = _build_term(i, name, kwargs, mode, class_weight, ignore_index,
                           num_classes if task is None else task.out_channels)
        seen[name] = seen.get(name, 0) + 1
        built.append((name if seen[name] == 1 else f"{name}_{seen[name]}", weight, loss))
    return Criterion(built, aux_weight, ignore_index, num_classes, task)


def _build_term(i: int, name: str, kwargs: dict, mode: str, class_weight, ignore_index: int,
                num_classes: int | None) -> nn.Module:
    """Loss term ``i``, checked to work in the task ``mode``, with the class weights where given."""
    if mode not in loss_modes(name):
        fitting = [n for n in list_losses() if mode in loss_modes(n)]
        raise ValueError(f"loss {name!r} does not work in task {mode}; losses for {mode}: {', '.join(fitting)}")
    if class_weight is not None:
        arg = class_weight_arg(name)
        if arg is None:
            takers = [n for n in list_losses() if class_weight_arg(n)]
            raise ValueError(f"loss {name!r} takes no class weights; loss.class_weight works with "
                             f"{', '.join(takers)}")
        if arg in kwargs:
            raise ValueError(f"loss term {i} ({name}) sets {arg} and loss.class_weight is given too; "
                             "give the class weights once")
        kwargs[arg] = list(class_weight)
    return build_loss(name, ignore_index=ignore_index, num_classes=num_classes, **kwargs)
