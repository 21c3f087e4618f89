"""Semantic-segmentation metrics accumulated over a whole dataset (and across processes).

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


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 pixel counts, rows the target class and columns the predicted one, over the
    pixels whose target is not ``ignore_index``. ``prediction`` and ``target`` hold class indices of one shape;
    predictions must lie in ``[0, num_classes)``."""
    labelled = target != ignore_index
    index = target[labelled].long() * num_classes + prediction[labelled].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """Scores from a (true, predicted) confusion matrix: ``mIoU``, ``mAcc``, ``aAcc`` and
    ``per_class`` (name, IoU, Acc; NaN where the class never occurs)."""
    cm = confusion.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    names = class_names or [str(i) for i in range(cm.shape[0])]
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class": [
            {"name": n, "IoU": float(i), "Acc": float(a)} for n, i, a in zip(names, iou.tolist(), acc.tolist())
        ],
    }


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else float("nan")


class SegmentationMetrics:
    """Accumulates a confusion matrix over batches of (logits or class indices, target) pairs;
    pixels labelled ``ignore_index`` are skipped."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, ignore_index: int = 255,
                 device: torch.device | str = "cpu") -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = class_names
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction``: (N, C, H, W) logits or (N, H, W) class indices; ``target``: (N, H, W)."""
        if prediction.dim() == 4:
            prediction = prediction.argmax(1)
        elif prediction.numel():  # class indices from the caller: one pass for both bounds
            low, high = (int(v) for v in torch.aminmax(prediction))
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"prediction holds class indices outside [0, {self.num_classes}): {low}..{high}")
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            values = sorted(set(target[bad].unique().tolist()))
            raise ValueError(
                f"target holds labels {values[:10]} outside [0, {self.num_classes}) and not {self.ignore_index}"
            )
        self.confusion += confusion_matrix(prediction, target.to(prediction.device), self.num_classes,
                                           self.ignore_index).to(self.confusion.device)

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
    """A per-class IoU/Acc table followed by the summary line, for terminals and logs."""
    width = max([len(c["name"]) for c in result["per_class"]] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for c in result["per_class"]:
        lines.append(f"{c['name']:<{width}}  {_pct(c['IoU'])}  {_pct(c['Acc'])}")
    lines.append("-" * (width + 16))
    lines.append(f"mIoU {_pct(result['mIoU'])}  mAcc {_pct(result['mAcc'])}  aAcc {_pct(result['aAcc'])}")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "   n/a" if v is None or math.isnan(v) else f"{100 * v:6.2f}"
