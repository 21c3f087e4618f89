"""Semantic FPN head: the semantic-segmentation branch of Panoptic FPN (Kirillov et al. 2019)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.features import FeatureSpec
from .common import classifier, describe, find_feature, resize_to
from .registry import register_head


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels)  # 32 groups as in the paper whenever the width allows
    return nn.GroupNorm(groups, channels)


class _UpStage(nn.Module):
    """conv3x3-GroupNorm-ReLU, then (optionally) 2x bilinear upsampling."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = _group_norm(out_channels)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)), inplace=True)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x


@register_head("fpn")
class SemanticFPNHead(nn.Module):
    """FPN over the backbone's feature levels, then the semantic branch: each level is brought to
    the finest level's stride by log2(stride ratio) stages of conv3x3-GN-ReLU-2x upsampling (one
    conv without upsampling for the finest), summed, and classified by a 1x1 conv.

    Levels that share a stride (a dilated backbone at output stride 8 or 16) are merged in the
    top-down path at the same resolution and get the same number of upsampling stages.

    Args:
        in_features: names of the features to use; default: every feature at stride >= 4 (the
            paper's P2-P5; the stride-2 stem would only add cost), or all if none is.
        fpn_channels: width of the laterals and FPN outputs (256 in the paper).
        channels: width of the semantic branch (128 in the paper).
        dropout: dropout before the 1x1 classifier.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        in_features: Sequence[str] | None = None,
        fpn_channels: int = 256,
        channels: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        if in_features is not None:
            specs = [find_feature(feature_info, n, "fpn") for n in in_features]
            if not specs:
                raise ValueError(f"in_features must name at least one of: {describe(feature_info)}")
            specs.sort(key=lambda s: [f.name for f in feature_info].index(s.name))
        else:
            specs = [s for s in feature_info if s.stride >= 4] or list(feature_info)
        self.in_features = [s.name for s in specs]
        finest = min(s.stride for s in specs)
        self.output_stride = finest
        self.lateral = nn.ModuleList(nn.Conv2d(s.channels, fpn_channels, 1) for s in specs)
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in specs)
        branches = []
        for s in specs:
            num_up = max(0, round(math.log2(s.stride / finest)))
            stages = [_UpStage(fpn_channels if i == 0 else channels, channels, True) for i in range(num_up)]
            branches.append(nn.Sequential(*(stages or [_UpStage(fpn_channels, channels, False)])))
        self.branches = nn.ModuleList(branches)
        self.classifier = classifier(channels, num_classes, dropout)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        laterals = [conv(features[n]) for conv, n in zip(self.lateral, self.in_features)]
        # Top-down: each level adds the (resized) level above it; same-stride levels just add.
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + resize_to(laterals[i + 1], laterals[i].shape[-2:])
        outs = [smooth(x) for smooth, x in zip(self.smooth, laterals)]
        size = max((x.shape[-2:] for x in outs), key=lambda s: s[0] * s[1])
        fused = sum(resize_to(branch(x), size) for branch, x in zip(self.branches, outs))
        return self.classifier(fused)
