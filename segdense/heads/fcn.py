"""FCN head (Long et al. 2015, as in torchvision/mmseg) and the FCN auxiliary head."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..backbones.features import FeatureSpec, feature_at_stride
from .common import ConvBNReLU, classifier, deepest, find_feature
from .registry import register_head


class _FCNOn(nn.Module):
    """``num_convs`` conv3x3-BN-ReLU, dropout and a 1x1 classifier on one named feature."""

    def __init__(self, spec: FeatureSpec, num_classes: int, channels: int, num_convs: int, dropout: float):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be at least 1, got {num_convs}")
        self.in_feature = spec.name
        self.output_stride = spec.stride
        convs = [ConvBNReLU(spec.channels if i == 0 else channels, channels) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.classifier = classifier(channels, num_classes, dropout)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.convs(features[self.in_feature]))


@register_head("fcn")
class FCNHead(_FCNOn):
    """Classic FCN head on the deepest feature.

    Args:
        channels: width of the 3x3 convolutions.
        num_convs: number of conv3x3-BN-ReLU before the classifier (1 or 2 are usual).
        dropout: dropout before the 1x1 classifier.
        in_feature: name of the feature to use (default: the deepest).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        num_convs: int = 2,
        dropout: float = 0.1,
        in_feature: str | None = None,
    ):
        spec = find_feature(feature_info, in_feature, "fcn") if in_feature else deepest(feature_info)
        super().__init__(spec, num_classes, channels, num_convs, dropout)


def aux_feature(feature_info: Sequence[FeatureSpec]) -> FeatureSpec:
    """The auxiliary head's input: ``block3`` (DenseNet), ``layer3`` (ResNet) or ``stage3`` (RDNet's third
    pyramid level) if present, else the feature at stride 16, else the second-deepest feature (the deepest
    one if there is only one). Names come first: at output stride 16 or 8 several features share a stride."""
    for spec in feature_info:
        if spec.name in ("block3", "layer3", "stage3"):
            return spec
    spec = feature_at_stride(feature_info, 16)
    if spec is not None:
        return spec
    return feature_info[-2] if len(feature_info) > 1 else feature_info[-1]


@register_head("aux")
class AuxHead(_FCNOn):
    """FCN auxiliary head on the stride-16 feature (DenseNet's block 3), as in PSPNet/mmseg: with its defaults
    it has the parameters of mmseg's ``FCNHead(num_convs=1, concat_input=False)`` (under segdense's names:
    ``convs.0.0``/``convs.0.1`` for its ``convs.0.conv``/``convs.0.bn``, ``classifier.1`` for ``conv_seg``).

    Its loss weight lives in the criterion (``build_criterion(aux_weight=0.4)``).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
        in_feature: str | None = None,
    ):
        spec = find_feature(feature_info, in_feature, "aux") if in_feature else aux_feature(feature_info)
        super().__init__(spec, num_classes, channels, num_convs, dropout)
