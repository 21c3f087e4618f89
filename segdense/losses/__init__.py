"""Segmentation losses (all ignore ``ignore_index`` pixels, 255 by default) and the criterion.

>>> from segdense.losses import build_criterion
>>> criterion = build_criterion([{"name": "cross_entropy", "weight": 1.0}, {"name": "dice", "weight": 0.5}])
>>> total, logs = criterion(model(images), masks)
"""
from .base import SegLoss, build_loss, check_inputs, class_weight_arg, list_losses, loss_modes, register_loss
from .class_weights import median_frequency_weights
from .criterion import Criterion, build_criterion
from .pixelwise import CrossEntropyLoss, FocalLoss, OhemCrossEntropyLoss
from .region import DiceLoss, LovaszSoftmaxLoss
from .sigmoid import BinaryCrossEntropyLoss, LovaszHingeLoss, SigmoidDiceLoss, SigmoidFocalLoss

__all__ = [
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "Criterion",
    "DiceLoss",
    "FocalLoss",
    "LovaszHingeLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "SegLoss",
    "SigmoidDiceLoss",
    "SigmoidFocalLoss",
    "build_criterion",
    "build_loss",
    "check_inputs",
    "class_weight_arg",
    "list_losses",
    "loss_modes",
    "median_frequency_weights",
    "register_loss",
]
