"""Building blocks and feature selection shared by the heads."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.features import FeatureSpec, feature_at_stride


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.ReLU]:
    """kxk convolution (no bias, 'same' padding for any dilation), BatchNorm, ReLU: the one conv-BN-ReLU unit of the
    heads. :class:`ConvBNReLU` and :class:`ConvModule` hold it under their checkpoints' two spellings."""
    padding = dilation * (kernel_size - 1) // 2
    return (nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ConvBNReLU(nn.Sequential):
    """:func:`conv_bn_relu` with its modules numbered ``0``, ``1``, ``2`` (segdense's DeepLab and FCN heads)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__(*conv_bn_relu(in_channels, out_channels, kernel_size, dilation))


class ConvModule(nn.Module):
    """:func:`conv_bn_relu` as mmcv's ``ConvModule`` that mmseg's heads build: the modules named ``conv``, ``bn``
    and ``activate``, as mmseg's checkpoints have them (UperNet)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        self.conv, self.bn, self.activate = conv_bn_relu(in_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize (``align_corners=False`` unless asked); a no-op when the size already matches, except while
    tracing (ONNX export), where the sizes seen at export need not be the ones seen at run time."""
    if tuple(x.shape[-2:]) == tuple(size) and not torch.jit.is_tracing():
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; while tracing (ONNX export) the same windows as averaging matrices
    built from the traced height and width, because the exporter can only write adaptive pooling for the
    sizes seen at export (and only when they divide evenly)."""
    if not torch.jit.is_tracing():
        return F.adaptive_avg_pool2d(x, size)
    rows = _pooling_matrix(x.shape[-2], size, x)
    cols = _pooling_matrix(x.shape[-1], size, x)
    return rows @ x @ cols.transpose(0, 1)


def _pooling_matrix(length, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, length): row i averages positions floor(i*length/size) to ceil((i+1)*length/size) - 1."""
    i = torch.arange(size, device=like.device)
    start = torch.div(i * length, size, rounding_mode="floor")
    end = torch.div((i + 1) * length + size - 1, size, rounding_mode="floor")
    position = torch.arange(length, device=like.device)
    window = ((position >= start[:, None]) & (position < end[:, None])).to(like.dtype)
    return window / window.sum(1, keepdim=True)


def describe(feature_info: Sequence[FeatureSpec]) -> str:
    return ", ".join(f"{s.name} (stride {s.stride}, {s.channels} ch)" for s in feature_info)


def deepest(feature_info: Sequence[FeatureSpec]) -> FeatureSpec:
    return feature_info[-1]


def low_level_feature(feature_info: Sequence[FeatureSpec], head: str, stride: int = 4) -> FeatureSpec:
    """The deepest feature at ``stride`` (the stride-4 'low-level' map of DeepLabV3+)."""
    spec = feature_at_stride(feature_info, stride)
    if spec is None:
        raise ValueError(
            f"head {head!r} needs a stride-{stride} feature, but this backbone has none; "
            f"its features are: {describe(feature_info)}"
        )
    return spec


def find_feature(feature_info: Sequence[FeatureSpec], name: str, head: str) -> FeatureSpec:
    for spec in feature_info:
        if spec.name == name:
            return spec
    raise ValueError(
        f"head {head!r} was asked for feature {name!r}, which the backbone does not have; "
        f"its features are: {describe(feature_info)}"
    )


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout then a 1x1 convolution to class logits."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))
