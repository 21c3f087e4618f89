"""Segmentation models: backbone + head (+ auxiliary head), built by name.

>>> from segdense.models import build_model
>>> model = build_model("densenet121", "deeplabv3", num_classes=21, output_stride=16)
"""
from .builder import build_model
from .param_groups import param_groups
from .segmentation import SegmentationModel

__all__ = ["SegmentationModel", "build_model", "param_groups"]
