"""Choosing a binary model's threshold on validation: the one that maximises the foreground IoU.

One pass over the validation set counts the labelled pixels of each class (background, foreground) in 1000 bins
of foreground probability, split at the candidate thresholds 0.001, 0.002, ..., 0.999 (float32, the values the
task compares with). A pixel falls in bin ``k`` when exactly ``k`` candidates lie below its probability, so at
threshold ``t_k`` the predicted foreground (probability > ``t_k``) is bins ``k`` and up, and every candidate's
confusion counts, hence its IoU, are exact: the choice is the best threshold on a grid of width 0.001, and the
scores returned are those of :meth:`segdense.tasks.BinaryTask.labels` at it. Under ``torch.distributed`` the
counts are summed across processes first, so every process chooses the same threshold.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..tasks import Task
from .segmentation import metrics_from_confusion

THRESHOLD_BINS = 1000  # candidate thresholds k / 1000: a grid of width 0.001


class ThresholdSearch:
    """In place of :class:`~segdense.metrics.SegmentationMetrics` for a binary ``task`` whose threshold is chosen:
    :meth:`update` takes float logits (N, 1, H, W) and targets (N, H, W); :meth:`compute` returns the scores at
    the best threshold, with ``threshold`` (and ``confusion``) in the result."""

    def __init__(self, task: Task, device: torch.device | str = "cpu", bins: int = THRESHOLD_BINS):
        if task.out_channels != 1:
            raise ValueError(f"a threshold is chosen for a binary task's one logit, not for task {task.name}")
        self.task, self.bins = task, int(bins)
        self.candidates = (torch.arange(1, self.bins, dtype=torch.float64) / self.bins).float().to(device)
        self.counts = torch.zeros(2, self.bins, dtype=torch.int64, device=device)  # (background, foreground) x bin

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if not logits.is_floating_point():
            raise TypeError("choosing a threshold needs the logits, not labels")
        self.task.check_target(logits, target.to(logits.device))
        probability = self.task.activation(logits.float())[:, 0]
        target = target.to(probability.device)
        labelled = target != self.task.ignore_index
        bins = torch.bucketize(probability[labelled], self.candidates.to(probability.device))  # candidates below
        index = target[labelled].long() * self.bins + bins
        self.counts += torch.bincount(index, minlength=2 * self.bins).view(2, self.bins).to(self.counts.device)

    def confusion_at(self, k: int, counts: torch.Tensor) -> torch.Tensor:
        """(1, 2, 2) counts (rows truth, columns prediction) at threshold ``candidates[k - 1]``, k in 1..bins-1."""
        background, foreground = counts
        return torch.stack([torch.stack([background[:k].sum(), background[k:].sum()]),
                            torch.stack([foreground[:k].sum(), foreground[k:].sum()])])[None]

    def compute(self) -> dict:
        counts = self.counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        counts = counts.cpu().double()
        background, foreground = counts
        # true positives, false positives, false negatives at every candidate k = 1 .. bins-1
        tp = foreground.flip(0).cumsum(0).flip(0)[1:]
        fp = background.flip(0).cumsum(0).flip(0)[1:]
        fn = foreground.cumsum(0)[:-1]
        union = tp + fp + fn
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, -1.0))
        k = int(iou.argmax()) + 1 if bool((union > 0).any()) else self.bins // 2  # nothing labelled: 0.5
        result = metrics_from_confusion(self.confusion_at(k, counts.long()), self.task.scored_classes)
        result["confusion"] = self.confusion_at(k, counts.long()).tolist()
        result["threshold"] = float(self.candidates[k - 1])
        return result

    def reset(self) -> None:
        self.counts.zero_()
