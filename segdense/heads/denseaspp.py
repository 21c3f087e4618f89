"""DenseASPP head (Yang et al., "DenseASPP for Semantic Segmentation in Street Scenes", CVPR 2018)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.features import FeatureSpec
from .common import classifier, deepest
from .registry import register_head

# The paper's (d0, d1) widths, keyed by the channels of each DenseNet's last feature map.
PAPER_WIDTHS: dict[int, tuple[int, int]] = {
    1024: (128, 64),  # DenseNet-121
    1664: (336, 168),  # DenseNet-169
    1920: (480, 240),  # DenseNet-201
    2208: (512, 128),  # DenseNet-161
}


def denseaspp_widths(in_channels: int) -> tuple[int, int]:
    """(d0, d1) for a backbone whose deepest feature has ``in_channels``: the paper's widths for
    the four ImageNet DenseNets, else C/8 and C/16 (at least 1), which is the DenseNet-121 ratio."""
    if in_channels in PAPER_WIDTHS:
        return PAPER_WIDTHS[in_channels]
    return max(1, round(in_channels / 8)), max(1, round(in_channels / 16))


# The BatchNorm momentum of the authors' ASPP units (models/DenseASPP.py).
ORIGINAL_BN_MOMENTUM = 0.0003


class _DenseASPPUnit(nn.Sequential):
    """BN-ReLU-1x1 conv (d0), BN-ReLU-3x3 dilated conv (d1), dropout.

    The first unit skips the leading BN-ReLU (``bn_start=False``), as the authors' code does:
    its input is the backbone's final map, which is already BN-ReLU'd. ``original``: the authors'
    unit: conv biases and BatchNorm momentum 0.0003. (Their first unit opens with an in-place ReLU on
    their backbone's last BN output, which so becomes the BN-ReLU map every later unit sees too: the
    same map segdense's DenseNet hands over.)
    """

    def __init__(self, in_channels: int, d0: int, d1: int, dilation: int, dropout: float, bn_start: bool,
                 original: bool = False):
        momentum = ORIGINAL_BN_MOMENTUM if original else 0.1
        pre = [nn.BatchNorm2d(in_channels, momentum=momentum), nn.ReLU(inplace=True)] if bn_start else []
        super().__init__(
            *pre,
            nn.Conv2d(in_channels, d0, 1, bias=original),
            nn.BatchNorm2d(d0, momentum=momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(d0, d1, 3, padding=dilation, dilation=dilation, bias=original),
            nn.Dropout2d(dropout),
        )


@register_head("denseaspp")
class DenseASPPHead(nn.Module):
    """Densely connected atrous units on the deepest feature: unit i sees the feature and all
    earlier units' outputs; the concatenation of everything goes to a 1x1 classifier.

    Args:
        atrous_rates: one unit per rate (paper: 3, 6, 12, 18, 24 at output stride 8).
        widths: (d0, d1); default from the deepest feature's channels (see :func:`denseaspp_widths`).
        dropout: dropout after each unit (paper 0.1) and before the classifier.
        original: the authors' head (DeepMotionAIResearch/DenseASPP ``models/DenseASPP.py``), for their
            converted checkpoint: conv biases and BatchNorm momentum 0.0003 in the units, each unit's output concatenated before (not after) its input, and the logits
            upsampled by the output stride, bilinear with ``align_corners=True`` (PyTorch 0.3.1's
            ``nn.Upsample``). Pair it with a DenseNet built with ``final_transition=True``.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureSpec],
        num_classes: int,
        output_stride: int,
        atrous_rates: Sequence[int] = (3, 6, 12, 18, 24),
        widths: Sequence[int] | None = None,
        dropout: float = 0.1,
        original: bool = False,
    ):
        super().__init__()
        spec = deepest(feature_info)
        self.in_feature = spec.name
        self.output_stride = spec.stride
        rates = [int(r) for r in atrous_rates]
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"atrous_rates must be positive ints, got {list(atrous_rates)}")
        d0, d1 = (int(w) for w in widths) if widths is not None else denseaspp_widths(spec.channels)
        if d0 < 1 or d1 < 1:
            raise ValueError(f"widths (d0, d1) must be positive, got {(d0, d1)}")
        self.atrous_rates, self.widths, self.original = tuple(rates), (d0, d1), bool(original)
        self.units = nn.ModuleList(
            _DenseASPPUnit(spec.channels + i * d1, d0, d1, r, dropout, bn_start=i > 0, original=self.original)
            for i, r in enumerate(rates)
        )
        out_channels = spec.channels + len(rates) * d1
        self.classifier = classifier(out_channels, num_classes, dropout)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        for unit in self.units:
            x = torch.cat([unit(x), x] if self.original else [x, unit(x)], 1)
        if not self.original:
            return self.classifier(x)
        return F.interpolate(self.classifier(x), scale_factor=self.output_stride, mode="bilinear",
                             align_corners=True)
