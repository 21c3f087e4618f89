"""torchvision's ResNet-50/101 as segdense backbones: the reference family for recipe comparisons.

Registered the way a user registers their own backbone (``@register_backbone``, ``feature_info``,
``forward_features``, ``output_stride``), so every head, loss and the trainer run on it unchanged.
Output strides 16 and 8 dilate the last one or two stages (torchvision's
``replace_stride_with_dilation``, as its DeepLabV3 does); parameter names equal torchvision's
without ``fc``, so its ImageNet checkpoints load at every output stride.
torchvision is imported when a ResNet is built, so ``import segdense.backbones`` needs only torch.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from .features import FeatureSpec
from .freezing import FreezableBackbone, check_freezing, stage_of_parameter
from .image_input import check_image_batch, use_channels_last
from .registry import register_backbone
from .weights import adapt_input_conv, download_weights, read_state_dict, state_dict_mismatch

__all__ = ["ResNet", "resnet50", "resnet101", "RESNET_OUTPUT_STRIDES"]

logger = logging.getLogger(__name__)

RESNET_OUTPUT_STRIDES = (8, 16, 32)
# Which of layer2/3/4 trade their stride for dilation at each output stride.
_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


class ResNet(FreezableBackbone):
    """A torchvision ResNet without its classifier, as a segdense backbone.

    Args:
        depth: 50 or 101.
        output_stride: 32, 16 or 8.
        in_channels: channels of the input image (the stem conv is rebuilt for other than 3).
        channels_last: as :class:`~segdense.backbones.DenseNet`: ``None`` runs channels-last on
            CPU inputs (faster oneDNN convolutions there), ``True``/``False`` always/never.
        zero_init_residual: zero the last BN's gamma of every residual block (torchvision's option).
        norm_eval: keep every BatchNorm in eval mode while training (``backbones.freezing``).
        frozen_stages: -1 trains everything; 0 freezes the stem (conv1, bn1); n also layer1..n.
    """

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 32,
        in_channels: int = 3,
        channels_last: bool | None = None,
        zero_init_residual: bool = False,
        norm_eval: bool = False,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        check_freezing(norm_eval, frozen_stages, 4)
        import torchvision.models as tvm  # optional at import time: only ResNets need torchvision

        builders = {50: tvm.resnet50, 101: tvm.resnet101}
        if depth not in builders:
            raise ValueError(f"ResNet depth must be one of {sorted(builders)}, got {depth}")
        if output_stride not in _DILATE:
            raise ValueError(
                f"output_stride={output_stride} is not valid for resnet{depth}; "
                f"valid output strides: {list(RESNET_OUTPUT_STRIDES)}"
            )
        if channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be None (auto), True or False, got {channels_last!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        net = builders[depth](
            weights=None, replace_stride_with_dilation=_DILATE[output_stride], zero_init_residual=zero_init_residual
        )
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.depth = depth
        self.output_stride = output_stride
        self.in_channels = in_channels
        self.channels_last = channels_last
        strides = [4]  # layer1 runs at the max-pool's stride; a dilated layer keeps the previous one
        for dilated in _DILATE[output_stride]:
            strides.append(strides[-1] if dilated else strides[-1] * 2)
        self.feature_info = [FeatureSpec("stem", 64, 2)] + [
            FeatureSpec(f"layer{i + 1}", 256 * 2**i, s) for i, s in enumerate(strides)
        ]
        self.norm_eval, self.frozen_stages = norm_eval, frozen_stages
        self.train()

    num_stages = 4  # layer1 .. layer4, after the stem

    def stages(self) -> list[list[nn.Module]]:
        """The stem (conv1, bn1), then layer1 .. layer4: the units ``frozen_stages`` counts."""
        return [[self.conv1, self.bn1]] + [[getattr(self, f"layer{i}")] for i in range(1, 5)]

    def stage_of(self, param_name: str) -> int:
        """0 for a stem parameter, ``i`` for one of ``layer<i>``; names relative to this backbone. Stage-wise
        learning-rate decay reads it."""
        return stage_of_parameter(self, self.stages(), param_name)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width the network accepts (every feature map stays non-empty)."""
        return self.output_stride

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Feature maps for decoders, shallow to deep, named and sized as ``feature_info`` says."""
        check_image_batch(x, self.in_channels, self.min_input_size, f"at output_stride={self.output_stride}")
        if use_channels_last(self.channels_last, x):
            x = x.contiguous(memory_format=torch.channels_last)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.relu(self.bn1(self.conv1(x)))
        out["stem"] = x
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out[f"layer{i}"] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest feature map."""
        return self.forward_features(x)["layer4"]


def load_resnet_weights(model: ResNet, pretrained: str, arch: str) -> None:
    """Load ``pretrained`` (a torchvision-style ``.pth``/``.safetensors`` file, or ``"imagenet"``
    for torchvision's IMAGENET1K_V1 weights) strictly; the file's ``fc`` classifier is dropped."""
    if str(pretrained) == "imagenet":
        import torchvision.models as tvm

        weights = {"resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights}[arch].IMAGENET1K_V1
        path = download_weights(weights.url, arch)
    else:
        path = Path(pretrained)
    state = read_state_dict(path)
    dropped = [k for k in state if k.startswith("fc.")]
    for key in dropped:
        del state[key]
    if dropped:
        logger.info("pretrained weights %s: dropped the ImageNet classifier (%s)", path, ", ".join(dropped))
    own = model.state_dict()
    if "conv1.weight" in state and state["conv1.weight"].shape[1] != model.in_channels:
        state["conv1.weight"] = adapt_input_conv(state["conv1.weight"], model.in_channels)
    problems = state_dict_mismatch(own, state)
    if problems:
        raise ValueError(f"pretrained weights {path} do not fit {arch}: {problems}")
    model.load_state_dict(state, strict=False)


def _resnet(arch: str, depth: int, pretrained: str | None, **kwargs) -> ResNet:
    model = ResNet(depth, **kwargs)
    if pretrained:
        load_resnet_weights(model, pretrained, arch)
    return model


@register_backbone
def resnet50(
    output_stride: int = 32,
    pretrained: str | None = None,
    in_channels: int = 3,
    channels_last: bool | None = None,
    zero_init_residual: bool = False,
    norm_eval: bool = False,
    frozen_stages: int = -1,
) -> ResNet:
    """torchvision's ResNet-50 (25.6M parameters with its classifier). ``pretrained``: a checkpoint
    path or ``"imagenet"``; ``output_stride`` 8 and 16 dilate the last stages."""
    return _resnet("resnet50", 50, pretrained, output_stride=output_stride, in_channels=in_channels,
                   channels_last=channels_last, zero_init_residual=zero_init_residual,
                   norm_eval=norm_eval, frozen_stages=frozen_stages)


@register_backbone
def resnet101(
    output_stride: int = 32,
    pretrained: str | None = None,
    in_channels: int = 3,
    channels_last: bool | None = None,
    zero_init_residual: bool = False,
    norm_eval: bool = False,
    frozen_stages: int = -1,
) -> ResNet:
    """torchvision's ResNet-101 (44.5M parameters with its classifier)."""
    return _resnet("resnet101", 101, pretrained, output_stride=output_stride, in_channels=in_channels,
                   channels_last=channels_last, zero_init_residual=zero_init_residual,
                   norm_eval=norm_eval, frozen_stages=frozen_stages)
