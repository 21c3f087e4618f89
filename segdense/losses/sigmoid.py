"""Sigmoid losses for the binary and multilabel tasks: BCE with ``pos_weight``, Dice, focal and Lovasz hinge.

Each takes (N, C, H, W) logits and (N, C, H, W) targets of 0/1 per label (a binary task's (N, H, W) mask is one
band, C = 1), with ``ignore_index`` on single labels. Dice, focal and Lovasz equal segmentation_models_pytorch's
``DiceLoss``, ``FocalLoss`` and ``LovaszLoss`` in ``mode="binary"``/``"multilabel"`` (the tests compare them);
BCE equals torch's ``binary_cross_entropy_with_logits`` over the labelled entries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SegLoss, register_loss, zero_loss
from .region import lovasz_grad

SIGMOID_MODES = ("binary", "multilabel")


def _per_class(values: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (C, N*H*W)."""
    return values.transpose(0, 1).reshape(values.shape[1], -1)


class SigmoidLoss(SegLoss):
    """A loss on independent per-label sigmoids."""

    modes = SIGMOID_MODES

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 3 and logits.dim() == 4 and logits.shape[1] == 1:
            target = target.unsqueeze(1)  # a binary mask
        if logits.dim() != 4 or target.shape != logits.shape:
            raise ValueError(f"{type(self).__name__} needs logits (N, C, H, W) and targets of the same shape (0/1 "
                             f"per label), got {tuple(logits.shape)} and {tuple(target.shape)}")
        bad = (target != self.ignore_index) & ((target < 0) | (target > 1))
        if bool(bad.any()):
            raise ValueError(f"{type(self).__name__}: targets must be 0, 1 or ignore_index={self.ignore_index}, got "
                             f"{torch.unique(target[bad])[:10].tolist()}")
        return self.compute(logits, target.long())


@register_loss("binary_cross_entropy")
class BinaryCrossEntropyLoss(SigmoidLoss):
    """Binary cross-entropy on logits, averaged over the labelled entries. ``pos_weight`` (one number, or one per
    class) weighs the positive term, as in ``torch.nn.BCEWithLogitsLoss``."""

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, pos_weight=None):
        super().__init__(ignore_index, num_classes)
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
        if weight is not None and (not bool((weight > 0).all()) or weight.dim() != 1):
            raise ValueError(f"pos_weight must be positive numbers (one, or one per class), got {pos_weight}")
        self.register_buffer("pos_weight", weight, persistent=False)

    def compute(self, logits, target):
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        pos_weight = None
        if self.pos_weight is not None:
            if self.pos_weight.numel() not in (1, logits.shape[1]):
                raise ValueError(f"{self.pos_weight.numel()} pos_weight values for {logits.shape[1]} classes")
            pos_weight = self.pos_weight.to(logits.dtype).view(1, -1, 1, 1).expand_as(logits)[valid]
        return F.binary_cross_entropy_with_logits(logits[valid], target[valid].to(logits.dtype),
                                                  pos_weight=pos_weight)


@register_loss("sigmoid_dice")
class SigmoidDiceLoss(SigmoidLoss):
    """Soft Dice per class over the batch, ``dice_c = (I_c + smooth) / ((P_c + T_c) / 2 + smooth)`` with I the sum
    of p*t, P of p, T of t over the labelled entries (p the sigmoid); loss = mean over classes of 1 - dice_c, where
    a class with no positive label adds 0 (smp's ``DiceLoss``)."""

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, smooth: float = 0.0,
                 eps: float = 1e-7):
        super().__init__(ignore_index, num_classes)
        if smooth < 0 or eps < 0:
            raise ValueError(f"smooth and eps must be >= 0, got {smooth}, {eps}")
        self.smooth, self.eps = float(smooth), float(eps)

    def compute(self, logits, target):
        valid = (target != self.ignore_index).to(logits.dtype)
        prob = _per_class(F.logsigmoid(logits).exp() * valid)
        truth = _per_class(target.to(logits.dtype) * valid)
        inter = (prob * truth).sum(1)
        half = (prob.sum(1) + truth.sum(1)) / 2
        dice = (inter + self.smooth) / (half + self.smooth).clamp_min(self.eps)
        return ((1.0 - dice) * (truth.sum(1) > 0).to(dice.dtype)).mean()


@register_loss("sigmoid_focal")
class SigmoidFocalLoss(SigmoidLoss):
    """Focal loss on sigmoids (Lin et al. 2017), ``(1 - p_t)^gamma * BCE``, times ``alpha`` on positives and
    ``1 - alpha`` on negatives when ``alpha`` is given; averaged over each class's labelled entries, then over the
    classes (smp's ``FocalLoss``)."""

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, gamma: float = 2.0,
                 alpha: float | None = None):
        super().__init__(ignore_index, num_classes)
        if gamma < 0 or (alpha is not None and not 0.0 <= alpha <= 1.0):
            raise ValueError(f"need gamma >= 0 and alpha in [0, 1] or null, got {gamma}, {alpha}")
        self.gamma, self.alpha = float(gamma), alpha

    def compute(self, logits, target):
        valid = _per_class(target != self.ignore_index)
        if not bool(valid.any()):
            return zero_loss(logits)
        truth = _per_class(torch.where(target == self.ignore_index, 0, target)).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(_per_class(logits), truth, reduction="none")
        loss = (1.0 - torch.exp(-bce)).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * truth + (1 - self.alpha) * (1 - truth))
        counts = valid.sum(1)
        per_class = (loss * valid).sum(1) / counts.clamp_min(1)
        return per_class[counts > 0].mean()


@register_loss("lovasz_hinge")
class LovaszHingeLoss(SigmoidLoss):
    """Lovasz hinge (Berman et al. 2018), a convex surrogate of the IoU of the positive labels, over every labelled
    entry of the batch (all classes together, as smp's ``LovaszLoss`` in binary and multilabel mode)."""

    def compute(self, logits, target):
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        labels = target[valid].to(logits.dtype)
        errors = 1.0 - logits[valid] * (2.0 * labels - 1.0)
        errors_sorted, perm = torch.sort(errors, descending=True)
        return torch.dot(F.relu(errors_sorted), lovasz_grad(labels[perm]))
