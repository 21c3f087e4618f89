"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) heads."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.features import FeatureSpec
from .common import ConvBNReLU, classifier, deepest, low_level_feature, resize_to
from .registry import register_head


def default_atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP rates that cover the same image region at any output stride: (6, 12, 18) at 16,
    doubled at 8 (12, 24, 36), halved at 32 (3, 6, 9)."""
    return tuple(max(1, r * 16 // output_stride) for r in (6, 12, 18))


class ImagePooling(nn.Module):
    """Global average pooling, 1x1 conv (with bias, no norm) and ReLU, broadcast back to the map.

    No BatchNorm here: on a 1x1 map with batch size 1 it has a single value per channel and fails
    in training (torchvision's ASPPPooling does exactly that). A biased conv keeps the branch
    usable at any batch size.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per atrous rate, image
    pooling, then a 1x1 projection (BN-ReLU) and dropout."""

    def __init__(self, in_channels: int, channels: int, atrous_rates: Sequence[int], dropout: float):
        super().__init__()
        rates = [int(r) for r in atrous_rates]
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"atrous_rates must be positive ints, got {list(atrous_rates)}")
        self.atrous_rates = tuple(rates)
        branches = [ConvBNReLU(in_channels, channels, 1)]
        branches += [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
        branches.append(ImagePooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(channels * len(branches), channels, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], 1)))


@register_head("deeplabv3")
class DeepLabV3Head(nn.Module):
    """ASPP on the deepest feature, a 3x3 conv and a 1x1 classifier.

    Args:
        channels: width of every ASPP branch and of the projection (256 in the paper).
        atrous_rates: rates of the three 3x3 branches; default follows the output stride
            (see :func:`default_atrous_rates`).
        dropout: dropout after the ASPP projection.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        spec = deepest(feature_info)
        self.in_feature = spec.name
        self.output_stride = spec.stride
        rates = atrous_rates if atrous_rates is not None else default_atrous_rates(spec.stride)
        self.aspp = ASPP(spec.channels, channels, rates, dropout)
        self.conv = ConvBNReLU(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.conv(self.aspp(features[self.in_feature])))


@register_head("deeplabv3plus")
class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deepest feature, upsampled to the stride-4 low-level feature (projected to
    ``low_level_channels``), concatenated, fused by two 3x3 convs, then a 1x1 classifier.

    Needs a backbone feature at stride 4 (DenseNet's ``block1``).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
        low_level_channels: int = 48,
        dropout: float = 0.1,
    ):
        super().__init__()
        spec = deepest(feature_info)
        low = low_level_feature(feature_info, "deeplabv3plus", 4)
        self.in_feature, self.low_level_feature = spec.name, low.name
        self.output_stride = low.stride
        rates = atrous_rates if atrous_rates is not None else default_atrous_rates(spec.stride)
        self.aspp = ASPP(spec.channels, channels, rates, dropout)
        self.low_level_project = ConvBNReLU(low.channels, low_level_channels, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(channels + low_level_channels, channels),
            ConvBNReLU(channels, channels),
        )
        self.classifier = classifier(channels, num_classes, dropout)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        low = self.low_level_project(features[self.low_level_feature])
        x = resize_to(self.aspp(features[self.in_feature]), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([x, low], 1)))


@register_head("deeplabv3plus_lite", kwargs_to=DeepLabV3PlusHead)
def deeplabv3plus_lite(feature_info: Sequence[FeatureSpec], num_classes: int, output_stride: int,
                       channels: int = 128, **kwargs) -> DeepLabV3PlusHead:
    """DeepLabV3+ at half width (128-channel ASPP and decoder): the default head of ``tools/train.py`` and
    ``segdense.build_model()``. On the synthetic shapes it learned as fast per iteration as the 256-channel
    ``deeplabv3plus`` at 0.6-0.8x the step time (docs/training.md). Other arguments are
    :class:`DeepLabV3PlusHead`'s."""
    return DeepLabV3PlusHead(feature_info, num_classes, output_stride, channels=channels, **kwargs)
