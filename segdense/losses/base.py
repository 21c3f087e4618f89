"""Loss registry and the input checks every segmentation loss shares."""
from __future__ import annotations

import abc

import torch
import torch.nn as nn

from ..registry import Registry

LOSSES = Registry("loss")


def register_loss(name: str):
    """Register a loss class as ``@register_loss("name")``. It is built as
    ``cls(ignore_index=..., num_classes=..., **loss_kwargs)``."""
    return LOSSES.register(name)


def list_losses() -> list[str]:
    """Names of all registered losses, sorted."""
    return LOSSES.names()


def class_weight_arg(name: str) -> str | None:
    """The argument through which the loss registered as ``name`` takes per-class weights, or None."""
    return getattr(LOSSES.get(name), "class_weight_arg", None)


def loss_modes(name: str) -> tuple[str, ...]:
    """The tasks (multiclass, binary, multilabel) the loss registered as ``name`` works in."""
    return getattr(LOSSES.get(name), "modes", ("multiclass",))


def build_loss(name: str, ignore_index: int = 255, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build the loss registered as ``name``."""
    return LOSSES.get(name)(ignore_index=ignore_index, num_classes=num_classes, **kwargs)


def check_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, num_classes: int | None) -> None:
    """Raise a clear error for logits/target that do not fit together.

    logits: (N, C, H, W) float; target: (N, H, W) integer with values in [0, C) or ``ignore_index``.
    """
    if logits.dim() != 4:
        raise ValueError(f"expected logits of shape (N, C, H, W), got {tuple(logits.shape)}")
    if target.dim() != 3 or target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not match logits of shape {tuple(logits.shape)}: "
            f"expected (N, H, W) = {(logits.shape[0], *logits.shape[2:])}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    c = logits.shape[1]
    if num_classes is not None and c != num_classes:
        raise ValueError(f"logits have {c} channels but the loss was built for num_classes={num_classes}")
    bad = (target != ignore_index) & ((target < 0) | (target >= c))
    if bool(bad.any()):
        values = torch.unique(target[bad])[:10].tolist()
        raise ValueError(
            f"target holds values outside [0, {c}) other than ignore_index={ignore_index}: "
            f"{values}{' ...' if torch.unique(target[bad]).numel() > 10 else ''}"
        )


def zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero that is still connected to the graph (finite, zero gradient): the loss of a batch in
    which every pixel is ignored."""
    return logits.sum() * 0.0


class SegLoss(nn.Module, abc.ABC):
    """Base class: ``forward(logits, target)`` checks the inputs, then calls ``compute``.

    ``class_weight_arg`` names the constructor argument that takes per-class weights (None: the loss takes
    none), so ``loss.class_weight`` reaches every term that supports it. ``modes`` names the tasks it works in."""

    class_weight_arg: str | None = None
    modes: tuple[str, ...] = ("multiclass",)  # the tasks (segdense.tasks) whose outputs it scores

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.ignore_index, self.num_classes)
        return self.compute(logits, target.long())

    @abc.abstractmethod
    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of valid logits/targets (``target`` holds class indices and ``ignore_index``)."""
