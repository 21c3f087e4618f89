"""Segmentation metrics for every task: IoU, Dice, precision, recall, accuracy and per-class tables from confusion
counts."""
from .segmentation import (SegmentationMetrics, class_counts, confusion_matrix, format_metrics_table, label_confusion,
                           metrics_from_confusion)
from .threshold import ThresholdSearch

__all__ = ["SegmentationMetrics", "class_counts", "confusion_matrix", "format_metrics_table", "label_confusion",
           "metrics_from_confusion", "ThresholdSearch"]
