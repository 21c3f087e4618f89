"""UperNet head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018), laid out as
mmsegmentation's ``UPerHead``: the same modules under the same names, so an mmseg ``decode_head.*``
state_dict loads with the identity key mapping (docs/upernet.md)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..backbones.features import FeatureSpec
from .common import ConvModule, adaptive_avg_pool, describe, find_feature, resize_to
from .registry import register_head


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` that ONNX export keeps valid at every input size (``adaptive_avg_pool``)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool(x, self.size)


def batchnorm_batch(bn: nn.Module, batch: int) -> int:
    """The number of images a BatchNorm's training statistics are taken over when each process holds ``batch``:
    for a ``SyncBatchNorm`` under an initialised process group, ``batch`` times the processes of its group (it
    gathers theirs; DistributedSampler gives every process a batch of the same size), else ``batch``."""
    if isinstance(bn, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized():
        return batch * dist.get_world_size(bn.process_group)
    return batch


class PyramidPooling(nn.ModuleList):
    """PSPNet's pyramid pooling module (mmseg's ``PPM``): for each scale s, average-pool to s x s, 1x1
    ConvModule, and resize back to the input's size. Scale 1's BatchNorm sees one value per channel and image, so
    it trains only on more than one image: one per process is enough under SyncBatchNorm across processes."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int):
        super().__init__(nn.Sequential(AdaptiveAvgPool(s), ConvModule(in_channels, channels, 1)) for s in pool_scales)
        self.pool_scales = tuple(pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.training and x.shape[0] == 1 and 1 in self.pool_scales:
            bn = self[self.pool_scales.index(1)][1].bn
            if batchnorm_batch(bn, 1) == 1:
                raise ValueError(
                    "upernet's pool scale 1 has BatchNorm on a 1x1 map (mmseg's layout), which cannot train on a "
                    "batch of one image: use a batch size of at least 2 (per process, or in all with SyncBatchNorm "
                    "across processes), or pool_scales without 1"
                )
        return [resize_to(branch(x), x.shape[-2:]) for branch in self]


def pyramid_features(feature_info: Sequence[FeatureSpec]) -> list[FeatureSpec]:
    """The encoder's pyramid: the leading run of features whose stride never decreases (an FC-DenseNet's up path
    is left out), without those finer than stride 4 (a stem) unless nothing else is left."""
    run = [feature_info[0]]
    for spec in feature_info[1:]:
        if spec.stride < run[-1].stride:
            break
        run.append(spec)
    return [s for s in run if s.stride >= 4] or run


def _chosen_features(feature_info: Sequence[FeatureSpec], in_features) -> list[FeatureSpec]:
    if in_features is None:
        return pyramid_features(feature_info)
    if isinstance(in_features, str) or not in_features:
        raise ValueError(
            f"upernet's in_features must be a non-empty list of feature names (or null for the backbone's pyramid), "
            f"got {in_features!r}; the features are: {describe(feature_info)}"
        )
    names = list(in_features)
    if len(set(names)) != len(names):
        raise ValueError(f"upernet's in_features names a feature twice: {names}")
    order = [s.name for s in feature_info]
    return sorted((find_feature(feature_info, n, "upernet") for n in names), key=lambda s: order.index(s.name))


def _check_pool_scales(pool_scales) -> tuple[int, ...]:
    scales = tuple(pool_scales)
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"upernet's pool_scales must be positive ints, e.g. [1, 2, 3, 6]; got {pool_scales!r}")
    return scales


@register_head("upernet")
class UPerNetHead(nn.Module):
    """UperNet: a pyramid pooling module on the deepest chosen feature, an FPN top-down path over the others,
    all levels resized to the first (shallowest) one, concatenated, fused by a 3x3 ConvModule and classified.

    Parameter names are mmseg's ``UPerHead``'s: ``psp_modules.{i}.1.{conv,bn}``, ``bottleneck``,
    ``lateral_convs.{i}``, ``fpn_convs.{i}``, ``fpn_bottleneck`` (each ``{conv,bn}``) and ``conv_seg``.

    Args:
        channels: width of every ConvModule (512 in mmseg's configs).
        pool_scales: output sizes of the pyramid pooling branches.
        dropout: ``Dropout2d`` before the 1x1 classifier ``conv_seg``.
        in_features: names of the features to use, shallow to deep (put in the backbone's order); default:
            the backbone's pyramid (``pyramid_features``: every feature from stride 4 on, up to the deepest).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        in_features: Sequence[str] | None = None,
    ):
        super().__init__()
        specs = _chosen_features(feature_info, in_features)
        scales = _check_pool_scales(pool_scales)
        self.in_features = [s.name for s in specs]
        self.output_stride = specs[0].stride
        deepest = specs[-1].channels
        self.psp_modules = PyramidPooling(scales, deepest, channels)
        self.bottleneck = ConvModule(deepest + len(scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(s.channels, channels, 1) for s in specs[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in specs[:-1])
        self.fpn_bottleneck = ConvModule(len(specs) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = [features[name] for name in self.in_features]
        deepest = inputs[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.bottleneck(torch.cat([deepest, *self.psp_modules(deepest)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds the (resized) level above it
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_to(x, size) for x in outs], dim=1))
        return self.conv_seg(self.dropout(fused))
