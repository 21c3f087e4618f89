"""HarDNet (Harmonic DenseNet, Chao et al., ICCV 2019) with a configurable output stride, for segmentation.

The module tree and parameter names equal the authors' ``hardnet.py`` (PingoLH/Pytorch-HarDNet): one
``nn.ModuleList`` ``base`` holding the stem (``base.0``, ``base.1``: ``ConvLayer`` conv/norm; ``base.2`` a 3x3 max
pool or, in the depthwise nets, a ``DWConvLayer`` dwconv/norm), then per block the ``HarDBlock``
(``base.i.layers.j``), in HarDNet-85 a dropout after the last one, the 1x1 ``ConvLayer`` and, where the block
downsamples, a 2x2 max pool or a stride-2 ``DWConvLayer``; with ``num_classes`` the classifier is the last entry
(``base.N.3`` its linear layer). So the authors' ImageNet files load strictly and the parameter counts match.

A HarDBlock's layer k (layer 0 is the block input) reads the concatenation of layers k - 2^i for every 2^i dividing
k, and is ``growth_rate * grmul^(links - 1)`` channels wide, rounded to an even number as the authors do. The
block returns the odd-numbered layers and the last one. A layer is Conv3x3-BN-ReLU6 (``ConvLayer``), or in the
depthwise ("DS") nets a 1x1 ``ConvLayer`` followed by a depthwise 3x3 conv and BN (``CombConvLayer``).

Output strides below 32 keep every parameter: a downsampling past the output stride runs at stride 1 with the
dilation reached so far, and the 3x3 convs after it are dilated twice as much per skipped downsampling. A 2x2 max
pool is padded as ``atrous.two_tap_padding`` says (with -inf); a stride-2 depthwise 3x3 conv is padded by its
dilation on every side. The dilated network then computes the strided one exactly on a sub-grid of its pixels, and
lags its pixel positions by a half-integer number of pixels (``Downsample.lag``); the feature maps returned for
decoders are moved back by that lag (``atrous.moved_up_left``), so each lines up with the strided network's map as
``align_corners=False`` upsampling places them. docs/hardnet.md gives the arithmetic. One state_dict loads at every
output stride.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segdense.errors import CheckpointError, ConfigError

from .atrous import moved_up_left, two_tap_padding
from .dense_concat import dense_path
from .features import FeatureSpec
from .freezing import FreezableBackbone, check_freezing, stage_of_parameter
from .hardnet_block import HarDBlock
from .hardnet_efficient import recomputed
from .image_input import check_image_batch, use_channels_last
from .registry import register_backbone
from .weights import adapt_input_conv, download_weights, read_state_dict, state_dict_mismatch

__all__ = ["HarDNet", "ARCHITECTURES", "hardnet39ds", "hardnet68ds", "hardnet68", "hardnet85",
           "download_hardnet_imagenet", "load_hardnet_pretrained"]

logger = logging.getLogger(__name__)

# The published architectures, as the authors' ``HarDNet(depth_wise, arch)`` defines them.
ARCHITECTURES = {
    "hardnet39ds": dict(stem_channels=(24, 48), transition_channels=(96, 320, 640, 1024), grmul=1.6,
                        growth_rates=(16, 20, 64, 160), num_layers=(4, 16, 8, 4), downsample=(1, 1, 1, 0),
                        depthwise=True, drop_rate=0.05),
    "hardnet68ds": dict(stem_channels=(32, 64), transition_channels=(128, 256, 320, 640, 1024), grmul=1.7,
                        growth_rates=(14, 16, 20, 40, 160), num_layers=(8, 16, 16, 16, 4),
                        downsample=(1, 0, 1, 1, 0), depthwise=True, drop_rate=0.05),
    "hardnet68": dict(stem_channels=(32, 64), transition_channels=(128, 256, 320, 640, 1024), grmul=1.7,
                      growth_rates=(14, 16, 20, 40, 160), num_layers=(8, 16, 16, 16, 4),
                      downsample=(1, 0, 1, 1, 0), depthwise=False, drop_rate=0.1),
    "hardnet85": dict(stem_channels=(48, 96), transition_channels=(192, 256, 320, 480, 720, 1280), grmul=1.7,
                      growth_rates=(24, 24, 28, 36, 48, 256), num_layers=(8, 16, 16, 16, 16, 4),
                      downsample=(1, 0, 1, 0, 1, 0), depthwise=False, drop_rate=0.2, last_block_dropout=0.1),
}
# Where the authors publish the ImageNet files (their hardnet.py): ``pretrained="imagenet"`` downloads them, each
# checked against the SHA256 prefix in its name as torch.hub does.
AUTHORS_URLS = {
    "hardnet39ds": "https://ping-chao.com/hardnet/hardnet39ds-0e6c6fa9.pth",
    "hardnet68ds": "https://ping-chao.com/hardnet/hardnet68ds-632474d2.pth",
    "hardnet68": "https://ping-chao.com/hardnet/hardnet68-5d684880.pth",
    "hardnet85": "https://ping-chao.com/hardnet/hardnet85-a28faa00.pth",
}


class ConvLayer(nn.Sequential):
    """Conv (``kernel`` x ``kernel``, padded to keep the size at stride 1), BN, ReLU6: the authors' ``ConvLayer``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel, stride=stride,
                                          padding=kernel // 2 * dilation, dilation=dilation, bias=False))
        self.add_module("norm", nn.BatchNorm2d(out_channels))
        self.add_module("relu", nn.ReLU6(inplace=True))


class DWConvLayer(nn.Sequential):
    """Depthwise 3x3 conv and BN, no activation: the authors' ``DWConvLayer``."""

    def __init__(self, channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.add_module("dwconv", nn.Conv2d(channels, channels, 3, stride=stride, padding=dilation,
                                            dilation=dilation, groups=channels, bias=False))
        self.add_module("norm", nn.BatchNorm2d(channels))


class CombConvLayer(nn.Sequential):
    """1x1 ``ConvLayer`` then ``DWConvLayer``: a depthwise net's HarDBlock layer (the authors' ``CombConvLayer``)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__()
        self.add_module("layer1", ConvLayer(in_channels, out_channels, 1))
        self.add_module("layer2", DWConvLayer(out_channels, dilation=dilation))


class MaxPool2x2(nn.Module):
    """2x2 max pooling: stride 2, or past the output stride stride 1 at ``dilation`` padded with -inf as
    ``atrous.two_tap_padding`` says. ``lag``: pixels the dilated output lags the strided one's positions."""

    def __init__(self, strided: bool, dilation: int = 1):
        super().__init__()
        self.strided, self.dilation = strided, dilation
        self.pad = None if strided else two_tap_padding(dilation)
        self.lag = 0.0 if strided else (self.pad[1] - self.pad[0]) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strided:
            return F.max_pool2d(x, 2, 2)
        return F.max_pool2d(F.pad(x, self.pad, value=float("-inf")), 2, 1, dilation=self.dilation)


class StridedDWConv(DWConvLayer):
    """The depthwise nets' downsampling ``DWConvLayer``: stride 2, or past the output stride stride 1 at
    ``dilation``. A strided 3x3 conv padded by 1 centres its output p on input 2p, half an input pixel before
    where ``align_corners=False`` places it; the dilated one centres q on q, so it lags by ``dilation / 2``
    pixels."""

    def __init__(self, channels: int, strided: bool, dilation: int = 1):
        super().__init__(channels, 2 if strided else 1, 1 if strided else dilation)
        self.lag = 0.0 if strided else dilation / 2


def hardnet_block(in_channels: int, growth_rate: int, grmul: float, num_layers: int, depthwise: bool,
                  dilation: int, memory_efficient: bool = False) -> HarDBlock:
    """A HarDBlock of ``ConvLayer`` (or, ``depthwise``, ``CombConvLayer``) layers, their 3x3 convs at ``dilation``."""
    def make(cin: int, cout: int) -> nn.Module:
        return CombConvLayer(cin, cout, dilation) if depthwise else ConvLayer(cin, cout, 3, dilation=dilation)
    return HarDBlock(in_channels, growth_rate, grmul, num_layers, make, memory_efficient=memory_efficient)


class HarDNet(FreezableBackbone):
    """HarDNet with ``output_stride`` 32, 16, 8 or 4 by dilation.

    Args (see ``ARCHITECTURES`` for the published values):
        stem_channels: the two stem convs' widths (3x3 stride 2, then 3x3, or 1x1 when ``depthwise``).
        transition_channels: each block's 1x1 ``ConvLayer`` width.
        grmul: the growth multiplier per extra link; growth_rates, num_layers: per block.
        downsample: per block, whether a 2x2 max pool (stride-2 depthwise conv when ``depthwise``) follows it.
        depthwise: the "DS" nets (``CombConvLayer`` layers, a 1x1 second stem conv, depthwise downsampling).
        drop_rate: the classifier's dropout; last_block_dropout: a dropout after the last block (HarDNet-85's).
        output_stride: 32 (nominal), 16, 8 or 4.
        num_classes: ``None`` (segmentation) or the classifier's classes (1000 for the authors' files).
        in_channels: input channels (the authors' files' stem is adapted on loading).
        channels_last: as :class:`~segdense.backbones.DenseNet` (``None``: channels-last on CPU inputs).
        norm_eval, frozen_stages: ``backbones.freezing`` (a stage is a block with its 1x1 conv and downsampling).
        memory_efficient: train the HarDBlocks keeping only each layer's output for backward, recomputing the
            layers in backward, and the stem, transition and downsampling modules keeping only their inputs
            (``hardnet_efficient``); the same values, the same parameters and checkpoints.
    """

    def __init__(
        self,
        stem_channels: Sequence[int] = ARCHITECTURES["hardnet68"]["stem_channels"],
        transition_channels: Sequence[int] = ARCHITECTURES["hardnet68"]["transition_channels"],
        grmul: float = 1.7,
        growth_rates: Sequence[int] = ARCHITECTURES["hardnet68"]["growth_rates"],
        num_layers: Sequence[int] = ARCHITECTURES["hardnet68"]["num_layers"],
        downsample: Sequence[int | bool] = ARCHITECTURES["hardnet68"]["downsample"],
        depthwise: bool = False,
        drop_rate: float = 0.1,
        last_block_dropout: float | None = None,
        output_stride: int = 32,
        num_classes: int | None = None,
        in_channels: int = 3,
        channels_last: bool | None = None,
        norm_eval: bool = False,
        frozen_stages: int = -1,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        spec = _checked_spec(transition_channels, growth_rates, num_layers, downsample)
        valid = [4 * 2 ** i for i in range(sum(spec[3]) + 1)]
        if output_stride not in valid:
            raise ValueError(f"output_stride={output_stride!r} is not valid for this HarDNet; "
                             f"valid output strides: {valid}")
        if channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be None (auto), True or False, got {channels_last!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        check_freezing(norm_eval, frozen_stages, len(spec[0]))
        self.output_stride, self.in_channels, self.num_classes = output_stride, in_channels, num_classes
        self.channels_last, self.norm_eval, self.frozen_stages = channels_last, norm_eval, frozen_stages
        self.num_stages = len(spec[0])
        self.base = nn.ModuleList([
            ConvLayer(in_channels, stem_channels[0], 3, stride=2),
            ConvLayer(stem_channels[0], stem_channels[1], 1 if depthwise else 3),
            StridedDWConv(stem_channels[1], True) if depthwise else nn.MaxPool2d(3, stride=2, padding=1),
        ])
        self.memory_efficient = memory_efficient
        self._build_blocks(stem_channels[1], spec, grmul, depthwise, last_block_dropout)
        channels = spec[0][-1]
        self.num_features = channels
        if num_classes is not None:
            self.base.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                           nn.Linear(channels, num_classes)))
        self.train()

    def _build_blocks(self, channels: int, spec, grmul: float, depthwise: bool,
                      last_block_dropout: float | None) -> None:
        """Append every block's modules to ``base``; set ``feature_info``, the stage units and each feature's lag."""
        widths, growth_rates, num_layers, downsample = spec
        self.feature_info = [FeatureSpec("stem", self.base[1].conv.out_channels, 2)]
        self._stage_units: list[list[nn.Module]] = []
        self._feature_after: dict[int, tuple[str, float]] = {1: ("stem", 0.0)}  # base index -> (name, lag)
        stride, dilation, lag = 4, 1, 0.0
        for i, width in enumerate(widths):
            unit = [hardnet_block(channels, growth_rates[i], grmul, num_layers[i], depthwise, dilation,
                                  self.memory_efficient)]
            if i == len(widths) - 1 and last_block_dropout is not None:
                unit.append(nn.Dropout(last_block_dropout))
            unit.append(ConvLayer(unit[0].out_channels, width, 1))
            channels = width
            if i == len(widths) - 1 or downsample[i]:
                self.feature_info.append(FeatureSpec(f"block{i + 1}", width, stride))
                self._feature_after[len(self.base) + len(unit) - 1] = (f"block{i + 1}", lag)
            if downsample[i]:
                strided = stride < self.output_stride
                unit.append((StridedDWConv(width, strided, dilation) if depthwise
                             else MaxPool2x2(strided, dilation)))
                lag += unit[-1].lag
                stride, dilation = (stride * 2, dilation) if strided else (stride, dilation * 2)
            self.base.extend(unit)
            self._stage_units.append(unit)

    def stages(self) -> list[list[nn.Module]]:
        """The stem, then each block with the modules up to the next block: the units ``frozen_stages`` counts."""
        return [list(self.base[:3])] + self._stage_units

    def stage_of(self, name: str) -> int:
        """The stage a parameter belongs to: 0 the stem, i + 1 block i (with its 1x1 conv and downsampling),
        ``num_stages + 1`` the classifier."""
        return stage_of_parameter(self, self.stages(), name, outside=self.num_stages + 1)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width the network accepts (every feature map stays non-empty)."""
        return self.output_stride

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Feature maps for decoders, shallow to deep, as ``feature_info`` names them: the stride-2 stem, then the
        1x1 conv's output before each downsampling and after the last block (past the dilation point moved back
        by the lag, onto the strided network's positions)."""
        check_image_batch(x, self.in_channels, self.min_input_size, f"at output_stride={self.output_stride}")
        if use_channels_last(self.channels_last, x):
            x = x.contiguous(memory_format=torch.channels_last)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        last = max(self._feature_after)
        for i, module in enumerate(self.base[:last + 1]):
            x = self._run(module, x)
            if i in self._feature_after:
                name, lag = self._feature_after[i]
                out[name] = moved_up_left(x, lag)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits when ``num_classes`` is set (the authors' pool, dropout, linear, on the unmoved last map),
        otherwise the last feature map."""
        if self.num_classes is None:
            return next(reversed(self.forward_features(x).values()))
        check_image_batch(x, self.in_channels, self.min_input_size, f"at output_stride={self.output_stride}")
        for module in self.base:
            x = self._run(module, x)
        return x

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``; in memory-efficient training a stem, transition or downsampling module is recomputed in
        backward (``hardnet_efficient.recomputed``), keeping only its input."""
        if isinstance(module, _RECOMPUTED) and dense_path(self.memory_efficient, self.training) == "buffer":
            return recomputed(module, x)
        return module(x)


# The modules between the HarDBlocks that memory-efficient training recomputes (not the dropout, whose mask a
# recomputation would draw anew, nor the classifier).
_RECOMPUTED = (ConvLayer, DWConvLayer, MaxPool2x2, nn.MaxPool2d)


def _checked_spec(widths, growth_rates, num_layers, downsample):
    """The per-block lists as plain lists, or one clear error."""
    widths, growth_rates = [int(c) for c in widths], [int(g) for g in growth_rates]
    num_layers, downsample = [int(n) for n in num_layers], [bool(d) for d in downsample]
    lengths = {len(widths), len(growth_rates), len(num_layers), len(downsample)}
    if len(lengths) != 1 or not widths:
        raise ValueError("transition_channels, growth_rates, num_layers and downsample need one entry per block, "
                         f"got {len(widths)}, {len(growth_rates)}, {len(num_layers)} and {len(downsample)}")
    if min(widths + growth_rates + num_layers) < 1:
        raise ValueError(f"transition_channels, growth_rates and num_layers must be positive, got {widths}, "
                         f"{growth_rates}, {num_layers}")
    return widths, growth_rates, num_layers, downsample


def download_hardnet_imagenet(arch: str | None) -> Path:
    """The authors' ImageNet file of the named HarDNet ``arch`` in the torch hub cache, under the name torch.hub
    gives it (downloaded the first time, and checked against the SHA256 prefix its name carries)."""
    if arch not in AUTHORS_URLS:
        raise ConfigError(f"pretrained='imagenet' needs a named HarDNet: {', '.join(AUTHORS_URLS)} (the authors' "
                          "ImageNet weights); pass pretrained=PATH to load a file of this architecture instead")
    return download_weights(AUTHORS_URLS[arch], arch)


def load_hardnet_pretrained(model: HarDNet, pretrained: str | os.PathLike, arch: str | None = None) -> None:
    """Load one of the authors' ImageNet files (``hardnet68-5d684880.pth``...: their key names, classifier
    ``base.N.*`` included; ``"imagenet"`` downloads the one of the named ``arch``) into ``model`` strictly. The
    classifier is dropped, with a log line, when the model has none or one of another size; a different
    ``in_channels`` adapts the stem."""
    path = download_hardnet_imagenet(arch) if str(pretrained) == "imagenet" else Path(pretrained)
    state = read_state_dict(path)
    own = model.state_dict()
    head = f"base.{len(model.base) - (0 if model.num_classes is None else 1)}."
    for key in [k for k in state if k.startswith(head)]:
        if key not in own or own[key].shape != state[key].shape:
            del state[key]
            logger.info("pretrained weights %s: dropped %s (this model has no classifier of that size)", path, key)
    stem = "base.0.conv.weight"
    if stem in state and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_input_conv(state[stem], own[stem].shape[1])
    problems = state_dict_mismatch(own, state)
    if problems:
        raise CheckpointError(f"pretrained weights {path} do not fit this model ({arch or 'HarDNet'}): {problems}")
    model.load_state_dict(state, strict=False)


def _hardnet(arch: str, pretrained: str | None, **kwargs) -> HarDNet:
    model = HarDNet(**{**ARCHITECTURES[arch], **kwargs})
    if pretrained:
        load_hardnet_pretrained(model, pretrained, arch)
    return model


@register_backbone(kwargs_to=HarDNet)
def hardnet39ds(pretrained: str | None = None, **kwargs) -> HarDNet:
    """HarDNet-39DS (depthwise; 3,488,228 parameters with the 1000-class classifier). ``pretrained``: a path to
    the authors' ImageNet file, or ``"imagenet"`` to download it. Other keyword arguments are :class:`HarDNet`'s."""
    return _hardnet("hardnet39ds", pretrained, **kwargs)


@register_backbone(kwargs_to=HarDNet)
def hardnet68ds(pretrained: str | None = None, **kwargs) -> HarDNet:
    """HarDNet-68DS (depthwise; 4,180,602 parameters with the classifier)."""
    return _hardnet("hardnet68ds", pretrained, **kwargs)


@register_backbone(kwargs_to=HarDNet)
def hardnet68(pretrained: str | None = None, **kwargs) -> HarDNet:
    """HarDNet-68 (17,565,348 parameters with the classifier)."""
    return _hardnet("hardnet68", pretrained, **kwargs)


@register_backbone(kwargs_to=HarDNet)
def hardnet85(pretrained: str | None = None, **kwargs) -> HarDNet:
    """HarDNet-85 (36,670,212 parameters with the classifier)."""
    return _hardnet("hardnet85", pretrained, **kwargs)
