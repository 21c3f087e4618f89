"""FC-HarDNet-70 (Chao et al., ICCV 2019), the real-time U-shaped segmenter on Harmonic Dense Blocks.

As FC-DenseNet, the whole encoder-decoder is one backbone; its last feature (the last up block, at stride 4) goes
to the ``tiramisu`` head (the authors' ``finalConv``, a 1x1 conv with bias), whose logits are upsampled to the input
with ``align_corners=True`` as the authors do (``conf/head/fchardnet.yaml``).

The module tree and parameter names equal the authors' ``ptsemseg/models/hardnet.py`` (PingoLH/FCHarDNet):

* ``base``: a ``ModuleList`` of the stem (four Conv-BN-ReLU ``ConvLayer``\\ s, 16/24/32/48 channels, the first and
  third with stride 2), then per block a ``HarDBlock`` (3x3 ``ConvLayer`` layers, grmul 1.7), a 1x1 ``ConvLayer`` to
  64/96/160/224/320 channels and, except after the last block, a 2x2 average pool. Their ``hardnet_petite_base.pth``
  is this ``base``'s state_dict.
* ``conv1x1_up``, ``denseBlocksUp``: per up step, the deeper map is upsampled bilinearly (``align_corners=True``)
  to the skip's size and concatenated before it (``TransitionUp``, no parameters), a 1x1 ``ConvLayer`` halves the
  channels and a HarDBlock with the skip's growth rate and depth follows.

So their checkpoints load strictly (under ``backbone.``, their ``finalConv`` as ``head.classifier``) and the
parameter count at 19 classes is theirs, 4,119,257.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from .features import FeatureSpec
from .freezing import FreezableBackbone, check_freezing
from .hardnet_block import HarDBlock
from .image_input import check_image_batch, use_channels_last
from .registry import register_backbone
from .weights import adapt_input_conv, download_weights, read_state_dict, state_dict_mismatch

__all__ = ["FCHarDNet", "fchardnet70", "petite_encoder_weights", "rgb_first_conv"]

STEM_CHANNELS = (16, 24, 32, 48)
TRANSITION_CHANNELS = (64, 96, 160, 224, 320)
GROWTH_RATES = (10, 16, 18, 24, 32)
NUM_LAYERS = (4, 4, 8, 8, 8)
GRMUL = 1.7
# The authors' ImageNet encoder, as their repository holds it (the last commit that changed it), and its git blob id:
# ``pretrained="imagenet"`` downloads it and checks it against that id.
PETITE_URL = ("https://raw.githubusercontent.com/PingoLH/FCHarDNet/c285029b1c07a8ebecaae6b0a858063f4546f43b/"
              "weights/hardnet_petite_base.pth")
PETITE_GIT_BLOB = "59ad749fde704f83988acd0a32b849e20778b9bf"


class ConvLayer(nn.Sequential):
    """Conv (no bias, ``kernel // 2`` padding)-BN-ReLU, the authors' ``ConvLayer``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)),
            ("norm", nn.BatchNorm2d(out_channels)),
            ("relu", nn.ReLU(inplace=True)),
        ]))


def _hard_block(in_channels: int, growth_rate: int, num_layers: int) -> HarDBlock:
    return HarDBlock(in_channels, growth_rate, GRMUL, num_layers, make_layer=ConvLayer)


def upsample_concat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """The authors' ``TransitionUp``: ``x`` resized bilinearly (``align_corners=True``) to ``skip``'s size, then
    concatenated before it."""
    up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
    return torch.cat([up, skip], 1)


class FCHarDNet(FreezableBackbone):
    """FC-HarDNet-70 as a segdense backbone.

    Args:
        in_channels: channels of the input image (3 in the authors' model).
        channels_last: run in channels-last memory format (``None``: when the input is).
        norm_eval: every BatchNorm in eval mode while training.
        frozen_stages: -1 trains everything; 0 freezes the stem; n also the first n down blocks (with their 1x1
            conv and pool).

    ``forward_features`` returns ``down1..down5`` (each HarDBlock of the down path, strides 4..64; the first four
    are the skips), then ``up1..up4`` (strides 32..4); the last is the output.
    """

    def __init__(self, in_channels: int = 3, channels_last: bool | None = None, norm_eval: bool = False,
                 frozen_stages: int = -1) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        check_freezing(norm_eval, frozen_stages, len(NUM_LAYERS))
        self.in_channels, self.channels_last = in_channels, channels_last
        self.norm_eval, self.frozen_stages = norm_eval, frozen_stages
        self.output_stride = 4
        self.base = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip((in_channels,) + STEM_CHANNELS[:-1], STEM_CHANNELS)):
            self.base.append(ConvLayer(c_in, c_out, 3, stride=2 if i in (0, 2) else 1))
        self.feature_info = self._build_down() + self._build_up()
        for m in self.modules():  # the authors' train.py initialisation (weights_init)
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
        self.train()

    def _build_down(self) -> list[FeatureSpec]:
        info, channels, self.block_indices = [], STEM_CHANNELS[-1], []
        for i, (growth, n, width) in enumerate(zip(GROWTH_RATES, NUM_LAYERS, TRANSITION_CHANNELS)):
            block = _hard_block(channels, growth, n)
            self.block_indices.append(len(self.base))
            self.base.append(block)
            info.append(FeatureSpec(f"down{i + 1}", block.out_channels, 4 * 2 ** i))
            self.base.append(ConvLayer(block.out_channels, width, 1))
            channels = width
            if i < len(NUM_LAYERS) - 1:
                self.base.append(nn.AvgPool2d(2, stride=2))
        return info

    def _build_up(self) -> list[FeatureSpec]:
        info, channels = [], TRANSITION_CHANNELS[-1]
        self.denseBlocksUp, self.conv1x1_up = nn.ModuleList(), nn.ModuleList()  # the authors' order
        skips = [self.base[j].out_channels for j in self.block_indices[:-1]]
        for step, i in enumerate(range(len(skips) - 1, -1, -1), 1):
            half = (channels + skips[i]) // 2
            self.conv1x1_up.append(ConvLayer(channels + skips[i], half, 1))
            block = _hard_block(half, GROWTH_RATES[i], NUM_LAYERS[i])
            self.denseBlocksUp.append(block)
            channels = block.out_channels
            info.append(FeatureSpec(f"up{step}", channels, 4 * 2 ** i))
        return info

    @property
    def min_input_size(self) -> int:
        """Smallest height/width taken: two stride-2 convs and four average pools must leave a pixel."""
        return 64

    def stages(self) -> list[list[nn.Module]]:
        """The stem, then each down block with its 1x1 conv and pool: the units ``frozen_stages`` counts."""
        starts = [0] + self.block_indices + [len(self.base)]
        return [list(self.base[a:b]) for a, b in zip(starts[:-1], starts[1:])]

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Each down block's output, then each up block's, named as ``feature_info``."""
        check_image_batch(x, self.in_channels, self.min_input_size, "for a stride-64 encoder")
        if use_channels_last(self.channels_last, x):
            x = x.contiguous(memory_format=torch.channels_last)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for j, module in enumerate(self.base):
            x = module(x)
            if j in self.block_indices:
                out[f"down{self.block_indices.index(j) + 1}"] = x
        skips = list(out.values())[:-1]
        for step, (conv, block) in enumerate(zip(self.conv1x1_up, self.denseBlocksUp), 1):
            x = block(conv(upsample_concat(x, skips[-step])))
            out[f"up{step}"] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last up block's output, at stride 4."""
        return self.forward_features(x)[f"up{len(self.denseBlocksUp)}"]


def rgb_first_conv(weights: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    """``weights`` with the conv ``key``'s input channels reversed: the authors' model reads BGR images, segdense's
    RGB ones."""
    return {**weights, key: weights[key].flip(1)} if key in weights else weights


def petite_encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ``hardnet_petite_base.pth`` (their ``base``'s state_dict: ``0.conv.weight``...) as
    ``fchardnet70``'s encoder weights (``base.*``), the first conv reading RGB."""
    return rgb_first_conv({f"base.{k}": v for k, v in state.items()}, "base.0.conv.weight")


def load_fchardnet_pretrained(model: FCHarDNet, path: str | Path) -> None:
    """Loads a file of the whole backbone, or of its encoder only (keys ``base.*``: the authors'
    ``hardnet_petite_base.pth`` after ``tools/convert.py``), strictly over the keys it covers; ``"imagenet"``
    downloads the authors' file and loads it as its conversion would."""
    if str(path) == "imagenet":
        path = download_weights(PETITE_URL, "fchardnet70", git_blob=PETITE_GIT_BLOB)
        state = petite_encoder_weights(read_state_dict(path))
    else:
        state = read_state_dict(Path(path))
    own = model.state_dict()
    stem = "base.0.conv.weight"
    if stem in state and state[stem].shape[1] != own[stem].shape[1]:  # e.g. an RGB file for 4-band data
        state[stem] = adapt_input_conv(state[stem], own[stem].shape[1])
    encoder_only = bool(state) and all(k.startswith("base.") for k in state)
    problems = state_dict_mismatch(own, state, ignore_missing=("conv1x1_up.", "denseBlocksUp.") if encoder_only
                                   else ())
    if problems:
        raise CheckpointError(f"pretrained weights {path} do not fit FC-HarDNet-70: {problems}")
    model.load_state_dict(state, strict=False)


@register_backbone(kwargs_to=FCHarDNet)
def fchardnet70(pretrained: str | None = None, **kwargs) -> FCHarDNet:
    """FC-HarDNet-70 (use with ``head=fchardnet``). ``pretrained``: a converted file of the whole backbone or of its
    encoder (the authors' ImageNet ``hardnet_petite_base.pth``), or ``"imagenet"`` to download that encoder. Other
    keyword arguments are :class:`FCHarDNet`'s."""
    model = FCHarDNet(**kwargs)
    if pretrained:
        load_fchardnet_pretrained(model, pretrained)
    return model
