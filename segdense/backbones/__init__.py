"""DenseNet, RDNet and HarDNet backbones for segmentation (and torchvision's ResNet-50/101 for reference). Needs only torch.

>>> from segdense.backbones import build_backbone
>>> net = build_backbone("densenet121", output_stride=16)
>>> feats = net.forward_features(torch.randn(1, 3, 224, 224))
"""
from .densenet import (
    DenseNet,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    densenet_custom,
    valid_output_strides,
)
from .hardnet import HarDNet, hardnet39ds, hardnet68, hardnet68ds, hardnet85
from .rdnet import RDNet, rdnet_base, rdnet_custom, rdnet_large, rdnet_small, rdnet_tiny
from .rdnet_weights import load_rdnet_pretrained, rdnet_timm_keys
from .fcdensenet import FCDenseNet, fcdensenet56, fcdensenet67, fcdensenet103, fcdensenet_custom
from .fchardnet import FCHarDNet, fchardnet70
from .features import FeatureSpec, feature_at_stride
from .resnet import ResNet, resnet50, resnet101
from .registry import build_backbone, list_backbones, register_backbone
from .weights import adapt_input_conv, convert_old_keys, load_pretrained, read_state_dict

__all__ = [
    "DenseNet",
    "RDNet",
    "FCDenseNet",
    "FCHarDNet",
    "HarDNet",
    "FeatureSpec",
    "ResNet",
    "adapt_input_conv",
    "build_backbone",
    "convert_old_keys",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "densenet_custom",
    "fcdensenet56",
    "fcdensenet67",
    "fcdensenet103",
    "fcdensenet_custom",
    "fchardnet70",
    "hardnet39ds",
    "hardnet68ds",
    "hardnet68",
    "hardnet85",
    "feature_at_stride",
    "list_backbones",
    "load_pretrained",
    "rdnet_base",
    "rdnet_custom",
    "rdnet_large",
    "rdnet_small",
    "rdnet_tiny",
    "rdnet_timm_keys",
    "load_rdnet_pretrained",
    "read_state_dict",
    "register_backbone",
    "resnet50",
    "resnet101",
    "valid_output_strides",
]
