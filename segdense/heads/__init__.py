"""Decoder heads, each built from a backbone's ``feature_info`` (no hard-coded channels).

>>> from segdense.heads import build_head
>>> head = build_head("deeplabv3", backbone.feature_info, num_classes=21, output_stride=16)
>>> logits = head(backbone.forward_features(x))   # at the head's own stride
"""
from .deeplab import ASPP, DeepLabV3Head, DeepLabV3PlusHead, default_atrous_rates
from .denseaspp import DenseASPPHead, denseaspp_widths
from .fcn import AuxHead, FCNHead, aux_feature
from .fpn import SemanticFPNHead
from .registry import build_head, list_heads, register_head
from .tiramisu import TiramisuHead
from .upernet import UPerNetHead, pyramid_features

__all__ = [
    "ASPP",
    "AuxHead",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "DenseASPPHead",
    "FCNHead",
    "SemanticFPNHead",
    "TiramisuHead",
    "UPerNetHead",
    "aux_feature",
    "build_head",
    "default_atrous_rates",
    "denseaspp_widths",
    "list_heads",
    "pyramid_features",
    "register_head",
]
