"""Region losses: soft Dice and Lovasz-softmax."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SegLoss, register_loss, zero_loss
from .class_weights import class_weight_tensor


@register_loss("dice")
class DiceLoss(SegLoss):
    """Soft multiclass Dice loss over the batch: for each class c,
    ``dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)`` with p the softmax
    and t the one-hot target, both over the non-ignored pixels; loss = 1 - mean_c dice_c, or with class
    ``weight`` w: 1 - sum_c w_c dice_c / sum_c w_c."""

    class_weight_arg = "weight"

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, smooth: float = 1.0, weight=None):
        super().__init__(ignore_index, num_classes)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.register_buffer("weight", class_weight_tensor(weight, num_classes), persistent=False)

    def compute(self, logits, target):
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        mask = valid.unsqueeze(1).to(logits.dtype)
        prob = F.softmax(logits, 1) * mask
        # One-hot by scatter in the logits' dtype: F.one_hot would allocate an int64 (N, H, W, C).
        onehot = torch.zeros_like(prob).scatter_(1, torch.where(valid, target, 0).unsqueeze(1), 1.0) * mask
        dims = (0, 2, 3)
        inter = (prob * onehot).sum(dims)
        denom = prob.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth).clamp(min=1e-12)
        if self.weight is None:
            return 1.0 - dice.mean()
        w = self.weight.to(dice.dtype)
        return 1.0 - (w * dice).sum() / w.sum()


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et al.)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


@register_loss("lovasz_softmax")
class LovaszSoftmaxLoss(SegLoss):
    """Lovasz-softmax loss (Berman et al. 2018), a convex surrogate of the per-class IoU, over all
    non-ignored pixels of the batch. ``classes="present"`` averages over the classes present in
    the target (the authors' default), ``"all"`` over every class; with class ``weight`` w the mean is
    weighted, sum_c w_c loss_c / sum_c w_c over those classes."""

    class_weight_arg = "weight"

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, classes: str = "present",
                 weight=None):
        super().__init__(ignore_index, num_classes)
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes
        self.register_buffer("weight", class_weight_tensor(weight, num_classes), persistent=False)

    def compute(self, logits, target):
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        c = logits.shape[1]
        prob = F.softmax(logits, 1).permute(0, 2, 3, 1)[valid]  # (P, C)
        labels = target[valid]
        losses, kept = [], []
        for k in range(c):
            fg = (labels == k).to(prob.dtype)
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors = (fg - prob[:, k]).abs()
            errors_sorted, perm = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
            kept.append(k)
        if not losses:
            return zero_loss(logits)
        if self.weight is None:
            return torch.stack(losses).mean()
        w = self.weight.to(prob.dtype)[kept]
        if not bool((w > 0).any()):
            return zero_loss(logits)
        return (w * torch.stack(losses)).sum() / w.sum()
