"""The ``tiramisu`` head: FC-DenseNet's last layer, a 1x1 convolution from the last up block's stack to the
classes (``backbones.fcdensenet``)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..backbones.features import FeatureSpec
from .common import deepest, find_feature
from .registry import register_head


@register_head("tiramisu")
class TiramisuHead(nn.Module):
    """1x1 convolution (with bias, HeUniform-initialised as in the authors' code) on one feature.

    Args:
        in_feature: the feature to classify; default the backbone's last one (an FC-DenseNet's ``upN``, at the
            input's resolution).
        align_corners: how the model upsamples these logits to the input (bilinear); FC-HarDNet's authors use
            ``True``.
    """

    def __init__(self, feature_info: Sequence[FeatureSpec], num_classes: int, output_stride: int,
                 in_feature: str | None = None, align_corners: bool = False) -> None:
        super().__init__()
        spec = find_feature(feature_info, in_feature, "tiramisu") if in_feature else deepest(feature_info)
        self.in_feature = spec.name
        self.output_stride = spec.stride
        self.align_corners = bool(align_corners)
        self.classifier = nn.Conv2d(spec.channels, num_classes, 1)
        nn.init.kaiming_uniform_(self.classifier.weight, nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features[self.in_feature])
