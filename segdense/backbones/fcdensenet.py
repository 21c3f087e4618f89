"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jégou et al., CVPR-W 2017), on segdense's dense block.

The whole encoder-decoder is one backbone; its last feature map (the last up block's stack, at the input's
resolution) goes to the ``tiramisu`` head, the paper's final 1x1 convolution. The up path's shape follows the down
path (mirrored layer counts, skip widths, the growth rate) and takes the same block options, so it is built with
it rather than as a separately configured decoder.

* First layer: 3x3 conv, 48 filters, stride 1.
* Dense layer: BN-ReLU-3x3 conv (k filters)-dropout, no bottleneck: ``densenet.DenseBlock`` with ``bn_size=None``,
  so the plain, memory-efficient, fused and CUDA-graphed paths, SyncBatchNorm and channels-last are the
  DenseNets' own.
* Transition down: BN-ReLU-1x1 conv (same width)-dropout-2x2 max-pool. Transition up: 3x3 transposed conv,
  stride 2 (2h+1 pixels), centre-cropped to the skip's size and concatenated before it.
* Down blocks return their input and new channels (the skip); the bottleneck and the up blocks pass on only
  their new channels, except the last up block, whose whole stack is the output.

Convolutions carry biases and are initialised HeUniform (``kaiming_uniform_`` for ReLU, zero biases), as in
the authors' code. Parameters at 11 classes, head included: 1,376,795 (56), 3,463,243 (67), 9,322,091 (103).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .densenet import DenseBlock
from .features import FeatureSpec
from .freezing import FreezableBackbone, check_freezing
from .image_input import check_image_batch, use_channels_last
from .registry import register_backbone
from ..errors import CheckpointError
from .weights import adapt_input_conv, read_state_dict, state_dict_mismatch

__all__ = ["FCDenseNet", "fcdensenet56", "fcdensenet67", "fcdensenet103", "fcdensenet_custom", "he_uniform_init"]


class _TransitionDown(nn.Sequential):
    """BN-ReLU-1x1 conv (same width)-dropout, then 2x2 max-pooling.

    ``memory_efficient``: in training, recomputed in backward from its input, the dense block's output, which the
    block keeps anyway. Otherwise it would keep four maps of its input's size (the BN-ReLU output, the dropout
    mask, the pooling's input and its indices) at every skip, most of what a memory-efficient FC-DenseNet keeps
    for backward (docs/fcdensenet.md). The recomputation draws the same dropout mask and leaves the BatchNorm's
    running statistics as the forward left them."""

    def __init__(self, channels: int, drop_rate: float, memory_efficient: bool = False) -> None:
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(channels)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(channels, channels, 1, bias=True)),
            ("drop", nn.Dropout(drop_rate)),
            ("pool", nn.MaxPool2d(2, stride=2)),
        ]))
        self.memory_efficient = memory_efficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient and self.training and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(super().forward, x, use_reentrant=False, context_fn=self._contexts)
        return super().forward(x)

    def _contexts(self):
        return nullcontext(), _buffers_restored(self)


@contextmanager
def _buffers_restored(module: nn.Module):
    """Runs a recomputation and puts every buffer back as it was (BatchNorm would count the batch again)."""
    saved = [b.clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


class _TransitionUp(nn.Module):
    """3x3 transposed conv, stride 2, no padding (h -> 2h+1), centre-cropped to the skip's size and concatenated
    before it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 3, stride=2, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.conv(x)
        h, w = skip.shape[-2:]
        top, left = (up.shape[-2] - h) // 2, (up.shape[-1] - w) // 2
        return torch.cat([up[:, :, top : top + h, left : left + w], skip], 1)


def he_uniform_init(net: nn.Module) -> None:
    """The authors' initialisation: HeUniform (gain for ReLU) on every (transposed) convolution, zero biases,
    BatchNorm gamma 1 and beta 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check(down: list[int], up: list[int], bottleneck: int, growth_rate: int, num_init_features: int,
           drop_rate: float, in_channels: int) -> None:
    if not down or any(n < 1 for n in down + up) or bottleneck < 1:
        raise ValueError(f"layers per dense block must be positive ints, got down_blocks={down}, "
                         f"bottleneck_layers={bottleneck}, up_blocks={up}")
    if len(up) != len(down):
        raise ValueError(f"up_blocks needs one entry per down block ({len(down)}), got {up}")
    if growth_rate < 1 or num_init_features < 1 or in_channels < 1:
        raise ValueError(f"growth_rate, num_init_features and in_channels must be positive, got {growth_rate}, "
                         f"{num_init_features}, {in_channels}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")


class FCDenseNet(FreezableBackbone):
    """FC-DenseNet as a segdense backbone: the down path, the bottleneck and the up path.

    Args:
        down_blocks: dense layers in each down block, e.g. ``(4, 5, 7, 10, 12)`` for FC-DenseNet103.
        bottleneck_layers: dense layers of the bottleneck block.
        up_blocks: dense layers in each up block; ``None`` mirrors ``down_blocks``.
        growth_rate: channels each dense layer adds (k).
        num_init_features: filters of the first 3x3 convolution.
        drop_rate: dropout after every dense layer and transition down (the paper's 0.2).
        in_channels: channels of the input image.
        memory_efficient, fused, cuda_graphs, channels_last, norm_eval: as :class:`~segdense.backbones.DenseNet`;
            they apply to every dense block, down and up.
        frozen_stages: -1 trains everything; 0 freezes the first conv; n also the first n down blocks with
            their transitions down.

    ``forward_features`` returns the skips ``down1..downN`` (strides 1..2^(N-1)), ``bottleneck`` (its new
    channels, stride 2^N) and ``up1..upN`` (the last at stride 1: the whole stack, the others their new channels).
    Any height and width of at least 2^N pixels works: odd sizes are handled by the centre crop.
    """

    def __init__(
        self,
        down_blocks: Sequence[int] = (4, 5, 7, 10, 12),
        bottleneck_layers: int = 15,
        up_blocks: Sequence[int] | None = None,
        growth_rate: int = 16,
        num_init_features: int = 48,
        drop_rate: float = 0.2,
        in_channels: int = 3,
        memory_efficient: bool = False,
        fused: bool | None = None,
        cuda_graphs: bool = False,
        channels_last: bool | None = None,
        norm_eval: bool = False,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        down = [int(n) for n in down_blocks]
        up = [int(n) for n in (reversed(down) if up_blocks is None else up_blocks)]
        _check(down, up, int(bottleneck_layers), growth_rate, num_init_features, drop_rate, in_channels)
        check_freezing(norm_eval, frozen_stages, len(down))
        self.down_blocks, self.up_blocks, self.bottleneck_layers = tuple(down), tuple(up), int(bottleneck_layers)
        self.growth_rate, self.in_channels, self.channels_last = growth_rate, in_channels, channels_last
        self.norm_eval, self.frozen_stages = norm_eval, frozen_stages
        self.output_stride = 1
        block = dict(bn_size=None, growth_rate=growth_rate, drop_rate=drop_rate, memory_efficient=memory_efficient,
                     fused=fused, cuda_graphs=cuda_graphs, bias=True)
        self.firstconv = nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=True)
        self.feature_info = self._build(num_init_features, block, drop_rate)
        he_uniform_init(self)
        self.train()

    def _build(self, channels: int, block: dict, drop_rate: float) -> list[FeatureSpec]:
        """Adds the blocks and transitions; returns ``feature_info``."""
        info, skips, k = [], [], self.growth_rate
        for i, n in enumerate(self.down_blocks, 1):
            self.add_module(f"denseblock_down{i}", DenseBlock(n, channels, **block))
            channels += n * k
            skips.append(channels)
            info.append(FeatureSpec(f"down{i}", channels, 2 ** (i - 1)))
            self.add_module(f"transition_down{i}", _TransitionDown(channels, drop_rate, block["memory_efficient"]))
        stride = 2 ** len(self.down_blocks)
        self.bottleneck = DenseBlock(self.bottleneck_layers, channels, keep_input=False, **block)
        new = self.bottleneck_layers * k
        info.append(FeatureSpec("bottleneck", new, stride))
        for i, n in enumerate(self.up_blocks, 1):
            last = i == len(self.up_blocks)
            self.add_module(f"transition_up{i}", _TransitionUp(new))
            channels = new + skips[-i]
            self.add_module(f"denseblock_up{i}", DenseBlock(n, channels, keep_input=last, **block))
            new, stride = n * k, stride // 2
            info.append(FeatureSpec(f"up{i}", channels + new if last else new, stride))
        return info

    @property
    def min_input_size(self) -> int:
        """Smallest height/width the network accepts: every max-pool halves it and must leave a pixel."""
        return 2 ** len(self.down_blocks)

    def stages(self) -> list[list[nn.Module]]:
        """The first conv, then each down block with its transition down: the units ``frozen_stages`` counts."""
        return [[self.firstconv]] + [[getattr(self, f"denseblock_down{i}"), getattr(self, f"transition_down{i}")]
                                     for i in range(1, len(self.down_blocks) + 1)]

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The skips, the bottleneck's new channels and each up block's output, named as ``feature_info``."""
        check_image_batch(x, self.in_channels, self.min_input_size,
                          f"for {len(self.down_blocks)} max-poolings")
        if use_channels_last(self.channels_last, x):
            x = x.contiguous(memory_format=torch.channels_last)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x, skips = self.firstconv(x), []
        for i in range(1, len(self.down_blocks) + 1):
            x = getattr(self, f"denseblock_down{i}")(x)
            out[f"down{i}"] = x
            skips.append(x)
            x = getattr(self, f"transition_down{i}")(x)
        x = self.bottleneck(x)
        out["bottleneck"] = x
        for i in range(1, len(self.up_blocks) + 1):
            x = getattr(self, f"transition_up{i}")(x, skips[-i])
            x = getattr(self, f"denseblock_up{i}")(x)
            out[f"up{i}"] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last up block's stack, at the input's resolution."""
        return self.forward_features(x)[f"up{len(self.up_blocks)}"]


def _fcdensenet(pretrained: str | None, **kwargs) -> FCDenseNet:
    model = FCDenseNet(**kwargs)
    if pretrained:  # no ImageNet weights exist for FC-DenseNets: a file of the same architecture, strictly
        state = read_state_dict(Path(pretrained))
        stem, own = "firstconv.weight", model.state_dict()
        if stem in state and state[stem].shape[1] != own[stem].shape[1]:  # e.g. an RGB file for 4-band data
            state[stem] = adapt_input_conv(state[stem], own[stem].shape[1])
        problems = state_dict_mismatch(own, state)
        if problems:
            raise CheckpointError(f"pretrained weights {pretrained} do not fit this FC-DenseNet: {problems}")
        model.load_state_dict(state, strict=False)
    return model


@register_backbone(kwargs_to=FCDenseNet)
def fcdensenet56(pretrained: str | None = None, **kwargs) -> FCDenseNet:
    """FC-DenseNet56: k=12, 4 layers in every block. Other keyword arguments are :class:`FCDenseNet`'s."""
    return _fcdensenet(pretrained, down_blocks=(4,) * 5, bottleneck_layers=4, growth_rate=12, **kwargs)


@register_backbone(kwargs_to=FCDenseNet)
def fcdensenet67(pretrained: str | None = None, **kwargs) -> FCDenseNet:
    """FC-DenseNet67: k=16, 5 layers in every block."""
    return _fcdensenet(pretrained, down_blocks=(5,) * 5, bottleneck_layers=5, growth_rate=16, **kwargs)


@register_backbone(kwargs_to=FCDenseNet)
def fcdensenet103(pretrained: str | None = None, **kwargs) -> FCDenseNet:
    """FC-DenseNet103: k=16; down 4-5-7-10-12, bottleneck 15, up 12-10-7-5-4."""
    return _fcdensenet(pretrained, down_blocks=(4, 5, 7, 10, 12), bottleneck_layers=15, growth_rate=16, **kwargs)


@register_backbone(kwargs_to=FCDenseNet)
def fcdensenet_custom(
    down_blocks: Sequence[int] = (4, 4, 4, 4, 4),
    bottleneck_layers: int = 4,
    up_blocks: Sequence[int] | None = None,
    growth_rate: int = 12,
    num_init_features: int = 48,
    drop_rate: float = 0.2,
    pretrained: str | None = None,
    **kwargs,
) -> FCDenseNet:
    """Any FC-DenseNet: layers per down block, bottleneck and up block (``None``: mirrored), k, first filters,
    dropout. ``pretrained`` takes a checkpoint path of the same architecture."""
    return _fcdensenet(pretrained, down_blocks=down_blocks, bottleneck_layers=bottleneck_layers, up_blocks=up_blocks,
                       growth_rate=growth_rate, num_init_features=num_init_features, drop_rate=drop_rate, **kwargs)
