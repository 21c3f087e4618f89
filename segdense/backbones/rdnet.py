"""RDNet ("DenseNets Reloaded", Kim, Heo and Han, ECCV 2024) with a configurable output stride, for segmentation.

The module tree and parameter names equal timm's ``models/rdnet.py`` (``stem.0``/``stem.1``,
``dense_stages.{i}.{0,1}`` for the transition before stage ``i``, ``dense_stages.{i}.{k}.dense_block{j}`` for its
layers, ``head.norm``/``head.fc``), so timm's checkpoints load without renaming and the parameter counts match.

A stage is a dense block: each layer ("feature mixer": depthwise 7x7 conv, LayerNorm, 1x1 conv, GELU, 1x1 conv,
effective squeeze-excitation in later stages, layer scale, drop path) reads the concatenation of the stage input
and every earlier layer's output, and adds ``growth_rate`` channels. Before every stage but the first a transition
(LayerNorm and a conv to half the channels) compresses them: 1x1, or 2x2 with stride 2 where the stage downsamples.

Output strides below the nominal 32 keep every parameter: a downsampling transition past the output stride becomes
its 2x2 conv at stride 1 with the dilation reached so far, and the depthwise 7x7 convs after it are dilated twice as
much per skipped downsampling (an a-trous network, as DeepLab's dilated ResNets). The first skipped transition
(dilation 1) pads its conv by one pixel on the right and bottom; the later ones (even dilations) pad half their
dilation on every side. The maps after the dilation point then hold the strided network's computation half a pixel
right of and below their pixel centres: in stages without effective SE, sampled every ``2**skipped`` pixels from
pixel ``2**(skipped - 1) - 1``, they equal the strided network's maps (the SE's global mean also sees the pixels in
between, so its stages only come close). The feature maps returned for decoders are resampled by that half pixel
(bilinearly: the mean of each pixel and its upper, left and upper-left neighbours), so every level is centred as
``align_corners=False`` upsampling assumes. The maps before the dilation point are unchanged. One state_dict loads
at every output stride.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atrous import half_pixel_centred, two_tap_padding
from .dense_concat import chained_concat, dense_path
from .features import FeatureSpec
from .freezing import FreezableBackbone, check_freezing, stage_of_parameter
from .image_input import check_image_batch
from .random_masks import drop_path_mask
from .rdnet_efficient import efficient_stage
from .rdnet_weights import load_rdnet_pretrained
from .registry import register_backbone

__all__ = ["RDNet", "rdnet_tiny", "rdnet_small", "rdnet_base", "rdnet_large", "rdnet_custom"]

# The published architectures, as timm's ``rdnet_*`` define them; RDNet's defaults are RDNet-T's.
_TINY = dict(num_init_features=64, growth_rates=(64, 104, 128, 128, 128, 128, 224), num_blocks_list=(3,) * 7,
             is_downsample_block=(False, True, True, False, False, False, True),
             block_type=("Block",) * 2 + ("BlockESE",) * 5)
_DOWN_11 = (False, True, True, False, False, False, False, False, False, True, False)
_SMALL = dict(num_init_features=72, growth_rates=(64, 128) + (128,) * 7 + (240,) * 2, num_blocks_list=(3,) * 11,
              is_downsample_block=_DOWN_11, block_type=("Block",) * 2 + ("BlockESE",) * 9)
_BASE = dict(num_init_features=120, growth_rates=(96, 128) + (168,) * 7 + (336,) * 2, num_blocks_list=(3,) * 11,
             is_downsample_block=_DOWN_11, block_type=("Block",) * 2 + ("BlockESE",) * 9)
_LARGE = dict(num_init_features=144, growth_rates=(128, 192) + (256,) * 8 + (360,) * 2, num_blocks_list=(3,) * 12,
              is_downsample_block=(False, True, True) + (False,) * 7 + (True, False),
              block_type=("Block",) * 2 + ("BlockESE",) * 10)
ARCHITECTURES = {"rdnet_tiny": _TINY, "rdnet_small": _SMALL, "rdnet_base": _BASE, "rdnet_large": _LARGE}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's ``LayerNorm2d``, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class EffectiveSE(nn.Module):
    """Effective squeeze-excitation (CenterMask): a 1x1 conv on the global mean, a hard-sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class FeatureMixer(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 1x1 conv to ``inter_channels``, GELU, 1x1 conv to ``out_channels``
    (then effective SE with ``ese``): timm's ``Block``/``BlockESE``, its ``layers`` keyed 0-5 as there."""

    def __init__(self, in_channels: int, inter_channels: int, out_channels: int, ese: bool, dilation: int = 1):
        super().__init__()
        mods = [
            nn.Conv2d(in_channels, in_channels, 7, padding=3 * dilation, dilation=dilation, groups=in_channels),
            LayerNorm2d(in_channels),
            nn.Conv2d(in_channels, inter_channels, 1),
            nn.GELU(),
            nn.Conv2d(inter_channels, out_channels, 1),
        ]
        if ese:
            mods.append(EffectiveSE(out_channels))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DenseLayer(nn.Module):
    """One RDNet layer: the ``growth_rate`` channels it adds, from the concatenation of all earlier ones (timm's
    ``DenseBlock``). ``drop_path_rate``: stochastic depth, per sample, in training."""

    def __init__(self, num_input_features: int, growth_rate: int, bottleneck_width_ratio: float, ese: bool,
                 drop_path_rate: float = 0.0, ls_init_value: float = 1e-6, dilation: int = 1):
        super().__init__()
        inter = int(num_input_features * bottleneck_width_ratio / 8) * 8
        self.gamma = nn.Parameter(torch.full((growth_rate,), float(ls_init_value))) if ls_init_value > 0 else None
        self.layers = FeatureMixer(num_input_features, inter, growth_rate, ese, dilation)
        self.drop_path_rate = float(drop_path_rate)
        self.growth_rate = growth_rate

    def new_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The new channels from the concatenation ``x``; ``mask`` is the drop-path mask to apply (``None``: none)."""
        out = self.layers(x)
        if self.gamma is not None:
            out = out * self.gamma.view(1, -1, 1, 1)
        if mask is not None:
            out = out * mask.to(out.dtype).div(1.0 - self.drop_path_rate)
        return out

    def draw_mask(self, like: torch.Tensor) -> torch.Tensor | None:
        """This step's drop-path mask (``None`` when the layer drops nothing now)."""
        if self.training and self.drop_path_rate > 0:
            return drop_path_mask(like, self.drop_path_rate)
        return None


class DenseStage(nn.ModuleDict):
    """``num_layers`` layers on a growing concatenation; returns the stage input and every layer's output.

    Training with ``memory_efficient`` writes every layer's output into one buffer and recomputes each layer's
    inner activations in backward (``rdnet_efficient``), with the plain graph's values; which form runs when is
    ``dense_concat.dense_path``'s rule, the DenseNets' too."""

    def __init__(self, num_layers: int, num_input_features: int, growth_rate: int, bottleneck_width_ratio: float,
                 ese: bool, drop_path_rates: Sequence[float], ls_init_value: float, dilation: int,
                 memory_efficient: bool):
        super().__init__()
        for j in range(num_layers):
            self.add_module(f"dense_block{j}", DenseLayer(
                num_input_features + j * growth_rate, growth_rate, bottleneck_width_ratio, ese, drop_path_rates[j],
                ls_init_value, dilation))
        self.memory_efficient = memory_efficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.values())
        path = dense_path(self.memory_efficient, self.training)
        if path == "export":
            return chained_concat(x, [layer.new_features for layer in layers])
        if path == "buffer":
            return efficient_stage(x, layers)
        features = [x]
        for layer in layers:
            cat = torch.cat(features, 1)
            features.append(layer.new_features(cat, layer.draw_mask(cat)))
        return torch.cat(features, 1)


class TransitionConv(nn.Conv2d):
    """The transition's conv: 1x1, or 2x2 with stride 2 where the stage downsamples. Past the output stride the
    2x2 conv runs at stride 1 with dilation ``dilation``, padded as ``atrous.two_tap_padding`` says (centred at an
    even dilation; at dilation 1 half a pixel right and down)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.pad = two_tap_padding(dilation) if kernel_size == 2 and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, self.pad)
        return super().forward(x)


class RDNet(FreezableBackbone):
    """RDNet with ``output_stride`` 32, 16, 8 (or ``patch_size``) by dilation.

    Args (timm's names):
        growth_rates: channels each layer of a stage adds, one per stage.
        num_blocks_list: layers per stage.
        is_downsample_block: per stage, whether its transition halves the resolution (the first entry is ignored:
            the first stage has no transition).
        block_type: per stage, ``"Block"`` or ``"BlockESE"`` (with effective squeeze-excitation).
        num_init_features: the patchify stem's channels; ``patch_size`` its kernel and stride.
        bottleneck_width_ratio: a layer's 1x1 expansion, ``int(in_channels * ratio / 8) * 8`` channels.
        transition_compression_ratio: a transition's output, ``int(channels * ratio / 8) * 8``.
        ls_init_value: layer-scale initial value (0: no layer scale).
        drop_path_rate: stochastic depth, rising linearly over all layers to this rate (timm's schedule), in [0, 1).
        output_stride: 32 (nominal for the published nets), 16, 8, ... down to ``patch_size``.
        num_classes: ``None`` (segmentation) or a classifier's classes (timm's ``head.norm``/``head.fc``).
        memory_efficient: train with one buffer per stage and the layers recomputed in backward.
        frozen_stages: -1 trains everything; 0 freezes the stem; n the stem and the first n stages.
        in_channels: input channels.
    """

    def __init__(
        self,
        growth_rates: Sequence[int] = _TINY["growth_rates"],
        num_blocks_list: Sequence[int] = _TINY["num_blocks_list"],
        is_downsample_block: Sequence[bool | None] = _TINY["is_downsample_block"],
        block_type: Sequence[str] = _TINY["block_type"],
        num_init_features: int = _TINY["num_init_features"],
        patch_size: int = 4,
        bottleneck_width_ratio: float = 4.0,
        transition_compression_ratio: float = 0.5,
        ls_init_value: float = 1e-6,
        drop_path_rate: float = 0.0,
        output_stride: int = 32,
        num_classes: int | None = None,
        memory_efficient: bool = False,
        frozen_stages: int = -1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        spec = _checked_spec(growth_rates, num_blocks_list, is_downsample_block, block_type)
        growth_rates, num_blocks_list, is_downsample_block, block_type = spec
        nominal = patch_size * 2 ** sum(is_downsample_block)
        valid = [patch_size * 2 ** i for i in range(sum(is_downsample_block) + 1)]
        if output_stride not in valid:
            raise ValueError(f"output_stride must be one of {valid} for this RDNet, got {output_stride!r}")
        if not 0.0 <= drop_path_rate < 1.0:  # at 1 the kept share is 0, and the mask's 1/keep scale 0/0
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        check_freezing(False, frozen_stages, len(growth_rates))
        self.frozen_stages = frozen_stages
        self.output_stride = output_stride
        self.nominal_stride = nominal
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_stages = len(growth_rates)
        self.arch = dict(growth_rates=growth_rates, num_blocks_list=num_blocks_list,
                         is_downsample_block=is_downsample_block, block_type=block_type,
                         num_init_features=num_init_features, patch_size=patch_size,
                         bottleneck_width_ratio=bottleneck_width_ratio,
                         transition_compression_ratio=transition_compression_ratio)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, num_init_features, patch_size, stride=patch_size),
                                  LayerNorm2d(num_init_features))
        channels = self._build_stages(drop_path_rate, ls_init_value, memory_efficient)
        self.num_features = channels
        self.head = _ClassifierHead(channels, num_classes) if num_classes is not None else None
        _init_as_timm(self)
        self.train()

    def _build_stages(self, drop_path_rate: float, ls_init_value: float, memory_efficient: bool) -> int:
        """The transitions and dense stages (``self.dense_stages``) and ``feature_info``; returns the channels of
        the last stage."""
        a = self.arch
        rates = torch.linspace(0, drop_path_rate, sum(a["num_blocks_list"]), device="cpu").split(list(a["num_blocks_list"]))
        self.dense_stages = nn.Sequential()
        self.feature_info: list[FeatureSpec] = []
        self._feature_stages: list[int] = []
        self._offset_stages: set[int] = set()  # after a skipped downsampling: half a pixel off the centres
        channels, stride, dilation = a["num_init_features"], a["patch_size"], 1
        for i, down in enumerate(a["is_downsample_block"]):
            mods: list[nn.Module] = []
            if i:
                out = int(channels * a["transition_compression_ratio"] / 8) * 8
                strided = down and stride < self.output_stride
                conv = TransitionConv(channels, out, 2 if down else 1, 2 if strided else 1,
                                      dilation if down and not strided else 1)
                mods += [LayerNorm2d(channels), conv]
                channels = out
                stride, dilation = (stride * 2, dilation) if strided else (stride, dilation * 2 if down else dilation)
            mods.append(DenseStage(a["num_blocks_list"][i], channels, a["growth_rates"][i],
                                   a["bottleneck_width_ratio"], a["block_type"][i] == "BlockESE", rates[i].tolist(),
                                   ls_init_value, dilation, memory_efficient))
            channels += a["num_blocks_list"][i] * a["growth_rates"][i]
            self.dense_stages.append(nn.Sequential(*mods))
            if i + 1 == self.num_stages or a["is_downsample_block"][i + 1]:
                self.feature_info.append(FeatureSpec(f"stage{len(self.feature_info) + 1}", channels, stride))
                self._feature_stages.append(i)
            if dilation > 1:
                self._offset_stages.add(i)
        return channels

    def stages(self) -> list[list[nn.Module]]:
        """The stem, then each stage with the transition before it: the units ``frozen_stages`` counts."""
        return [[self.stem]] + [[stage] for stage in self.dense_stages]

    def stage_of(self, name: str) -> int:
        """The stage a parameter belongs to (by its name in this module): 0 the stem, i + 1 stage i (with the
        transition before it), ``num_stages + 1`` the classifier."""
        return stage_of_parameter(self, self.stages(), name, outside=self.num_stages + 1)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width the network accepts (every feature map stays non-empty)."""
        return self.output_stride

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Feature maps for decoders, shallow to deep, as ``feature_info`` names them: the output of the stage
        before each downsampling stage, and of the last stage (after the dilation point resampled half a pixel,
        onto the pixel centres)."""
        check_image_batch(x, self.in_channels, self.min_input_size, f"at output_stride={self.output_stride}")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        specs = iter(self.feature_info)
        for i, stage in enumerate(self.dense_stages):
            x = stage(x)
            if i in self._feature_stages:
                out[next(specs).name] = half_pixel_centred(x) if i in self._offset_stages else x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits when ``num_classes`` is set (timm's pool, LayerNorm, linear), otherwise the last feature map."""
        x = next(reversed(self.forward_features(x).values()))
        return x if self.head is None else self.head(x)


class _ClassifierHead(nn.Module):
    """Global average pool, LayerNorm, linear: timm's ``NormMlpClassifierHead`` as RDNet uses it."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean((2, 3), keepdim=True)).flatten(1))


def _checked_spec(growth_rates, num_blocks_list, is_downsample_block, block_type):
    """The per-stage lists as plain lists, or one clear error."""
    growth_rates, num_blocks_list = [int(g) for g in growth_rates], [int(n) for n in num_blocks_list]
    is_downsample_block = [bool(d) for d in is_downsample_block]
    if isinstance(block_type, str):
        block_type = [block_type] * len(growth_rates)
    block_type = list(block_type)
    lengths = {len(growth_rates), len(num_blocks_list), len(is_downsample_block), len(block_type)}
    if len(lengths) != 1 or not growth_rates:
        raise ValueError(
            "growth_rates, num_blocks_list, is_downsample_block and block_type need one entry per stage, got "
            f"{len(growth_rates)}, {len(num_blocks_list)}, {len(is_downsample_block)} and {len(block_type)}")
    bad = [t for t in block_type if t not in ("Block", "BlockESE")]
    if bad:
        raise ValueError(f"block_type entries must be 'Block' or 'BlockESE', got {bad[0]!r}")
    if min(growth_rates) < 1 or min(num_blocks_list) < 1:
        raise ValueError(f"growth_rates and num_blocks_list must be positive, got {growth_rates}, {num_blocks_list}")
    is_downsample_block[0] = False
    return growth_rates, num_blocks_list, is_downsample_block, block_type


def _init_as_timm(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _rdnet(arch: str | None, pretrained: str | None, defaults: dict, **kwargs) -> RDNet:
    model = RDNet(**{**defaults, **kwargs})
    if pretrained:
        load_rdnet_pretrained(model, pretrained, arch)
    return model


@register_backbone(kwargs_to=RDNet)
def rdnet_tiny(pretrained: str | None = None, **kwargs) -> RDNet:
    """RDNet-T (7 stages of 3 layers, growth 64-104-128x4-224; 22,819,928 parameters). ``pretrained``: a timm or
    authors' ImageNet file. Other keyword arguments are :class:`RDNet`'s."""
    return _rdnet("rdnet_tiny", pretrained, _TINY, **kwargs)


@register_backbone(kwargs_to=RDNet)
def rdnet_small(pretrained: str | None = None, **kwargs) -> RDNet:
    """RDNet-S (11 stages; 49,168,920 parameters)."""
    return _rdnet("rdnet_small", pretrained, _SMALL, **kwargs)


@register_backbone(kwargs_to=RDNet)
def rdnet_base(pretrained: str | None = None, **kwargs) -> RDNet:
    """RDNet-B (11 stages; 85,686,576 parameters)."""
    return _rdnet("rdnet_base", pretrained, _BASE, **kwargs)


@register_backbone(kwargs_to=RDNet)
def rdnet_large(pretrained: str | None = None, **kwargs) -> RDNet:
    """RDNet-L (12 stages; 184,264,632 parameters)."""
    return _rdnet("rdnet_large", pretrained, _LARGE, **kwargs)


@register_backbone(kwargs_to=RDNet)
def rdnet_custom(pretrained: str | None = None, **kwargs) -> RDNet:
    """Any RDNet: :class:`RDNet`'s keyword arguments, among them ``growth_rates``, ``num_blocks_list``,
    ``is_downsample_block`` (which stages downsample), ``block_type`` (ESE per stage) and ``num_init_features`` (the
    stem width), each defaulting to RDNet-T's. ``pretrained`` takes a checkpoint of the same architecture."""
    return _rdnet(None, pretrained, {}, **kwargs)
