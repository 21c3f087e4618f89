"""Segmentation metrics: mIoU, mAcc, aAcc and per-class tables from a confusion matrix."""
from .segmentation import SegmentationMetrics, confusion_matrix, format_metrics_table, metrics_from_confusion

__all__ = ["SegmentationMetrics", "confusion_matrix", "format_metrics_table", "metrics_from_confusion"]
