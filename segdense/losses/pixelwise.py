"""Per-pixel losses: cross-entropy, OHEM cross-entropy, bootstrapped cross-entropy, focal."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SegLoss, register_loss, zero_loss
from .class_weights import class_weight_tensor


class _Weighted(SegLoss):
    class_weight_arg = "weight"

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, weight=None):
        super().__init__(ignore_index, num_classes)
        w = class_weight_tensor(weight, num_classes)
        self.register_buffer("weight", w, persistent=False)

    def _weight_for(self, logits: torch.Tensor):
        if self.weight is None:
            return None
        if self.weight.numel() != logits.shape[1]:
            raise ValueError(f"{self.weight.numel()} class weights for logits with {logits.shape[1]} classes")
        return self.weight.to(logits.dtype)


@register_loss("cross_entropy")
class CrossEntropyLoss(_Weighted):
    """Cross-entropy averaged over the non-ignored pixels (weighted mean with class ``weight``,
    as ``torch.nn.functional.cross_entropy``), with optional ``label_smoothing``."""

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, weight=None, label_smoothing: float = 0.0):
        super().__init__(ignore_index, num_classes, weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def compute(self, logits, target):
        if not bool((target != self.ignore_index).any()):
            return zero_loss(logits)
        return F.cross_entropy(
            logits, target, weight=self._weight_for(logits), ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


@register_loss("ohem_cross_entropy")
class OhemCrossEntropyLoss(_Weighted):
    """Cross-entropy over the hard pixels only (online hard example mining), with mmseg's
    ``OHEMPixelSampler`` selection: a pixel is kept when the softmax probability of its true class
    is below ``max(thresh, p_k)``, where ``p_k`` is the (``min_kept`` * batch size)-th smallest such
    probability among the valid pixels, so at least that many pixels stay. The loss is averaged
    over the kept pixels (class-weighted as in cross_entropy)."""

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, thresh: float = 0.7,
                 min_kept: int = 100000, weight=None):
        super().__init__(ignore_index, num_classes, weight)
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"thresh must be a probability in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.thresh, self.min_kept = float(thresh), int(min_kept)

    def compute(self, logits, target):
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        with torch.no_grad():
            prob = F.softmax(logits.float(), 1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
            valid_prob = prob[valid]
            kept = min(self.min_kept * logits.shape[0], valid_prob.numel() - 1)
            threshold = max(float(valid_prob.sort().values[kept]), self.thresh)
            hard = valid & (prob < threshold)
        if not bool(hard.any()):
            return zero_loss(logits)
        return F.cross_entropy(
            logits, torch.where(hard, target, self.ignore_index), weight=self._weight_for(logits),
            ignore_index=self.ignore_index,
        )


@register_loss("bootstrapped_cross_entropy")
class BootstrappedCrossEntropyLoss(_Weighted):
    """Cross-entropy over each image's hardest pixels, as FC-HarDNet's authors train (ptsemseg's
    ``bootstrapped_cross_entropy2d``): per image, the per-pixel losses (ignored pixels count as 0) sorted in
    descending order; if the (``min_K`` + 1)-th exceeds ``loss_th``, the mean of every loss above ``loss_th``, else
    the mean of the ``min_K`` largest. The images' means are averaged. Unlike ``ohem_cross_entropy`` the threshold
    is on the loss, not the probability, and the selection is per image."""

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, min_K: int = 4096,
                 loss_th: float = 0.3, weight=None):
        super().__init__(ignore_index, num_classes, weight)
        if min_K < 1:
            raise ValueError(f"min_K must be >= 1, got {min_K}")
        if loss_th < 0:
            raise ValueError(f"loss_th must be >= 0, got {loss_th}")
        self.min_K, self.loss_th = int(min_K), float(loss_th)

    def compute(self, logits, target):
        losses = F.cross_entropy(logits, target, weight=self._weight_for(logits), ignore_index=self.ignore_index,
                                 reduction="none").flatten(1)
        means = []
        for loss in losses:
            ranked = loss.sort(descending=True).values
            if self.min_K < ranked.numel() and ranked[self.min_K] > self.loss_th:
                means.append(ranked[ranked > self.loss_th].mean())
            else:
                means.append(ranked[: self.min_K].mean())
        return torch.stack(means).mean()


@register_loss("focal")
class FocalLoss(_Weighted):
    """Multiclass focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, averaged over
    the non-ignored pixels. ``alpha`` is an optional per-class weight list."""

    class_weight_arg = "alpha"

    def __init__(self, ignore_index: int = 255, num_classes: int | None = None, gamma: float = 2.0, alpha=None):
        super().__init__(ignore_index, num_classes, alpha)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def compute(self, logits, target):
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        safe = torch.where(valid, target, 0).unsqueeze(1)
        logp = F.log_softmax(logits, 1).gather(1, safe).squeeze(1)
        loss = -((1.0 - logp.exp()).clamp(min=0).pow(self.gamma)) * logp
        alpha = self._weight_for(logits)
        if alpha is not None:
            loss = loss * alpha[safe.squeeze(1)]
        return loss[valid].mean()
