"""DenseNet-BC (Huang et al. 2017) with a configurable output stride, for segmentation.

The module tree and parameter names equal torchvision's ``models.densenet`` (``features.conv0``,
``features.denseblock{b}.denselayer{l}.norm1``, ``features.transition{t}.conv``, ``features.norm5``,
``classifier``), so torchvision checkpoints load without renaming and the parameter counts match.
Output strides below the nominal one keep every transition's BN and 1x1 conv and only turn its
pooling into an identity, then dilate the 3x3 convs after it: the same state_dict loads at every
output stride.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .block_graphs import BlockGraphs
from .dense_concat import chained_concat, dense_path
from .efficient_block import efficient_dense_block, supports_efficient
from .features import FeatureSpec
from .freezing import FreezableBackbone, check_freezing, stage_of_parameter
from .image_input import check_image_batch, use_channels_last
from .random_masks import dropout_mask
from .registry import register_backbone
from .weights import load_pretrained

__all__ = [
    "DenseNet",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
    "densenet_custom",
    "valid_output_strides",
]


class DenseLayer(nn.Module):
    """A dense layer: the k channels it adds to the block, from the concatenation of all earlier ones.

    With ``bn_size`` (DenseNet-BC) the pre-activation bottleneck BN-ReLU-1x1 conv (bn_size*k) then BN-ReLU-3x3 conv
    (k); with ``bn_size=None`` (FC-DenseNet) a single BN-ReLU-3x3 conv (k), ``norm2``/``conv2`` being ``None``.
    ``bias``: the convs carry a bias (FC-DenseNet's do; DenseNet-BC's do not)."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int | None,
        drop_rate: float,
        dilation: int = 1,
        memory_efficient: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        if bn_size is None:
            self.conv1 = nn.Conv2d(num_input_features, growth_rate, 3, padding=dilation, dilation=dilation, bias=bias)
            self.norm2 = self.relu2 = self.conv2 = None
        else:
            self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=bias)
            self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(
                bn_size * growth_rate, growth_rate, 3, padding=dilation, dilation=dilation, bias=bias
            )
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def new_features(self, x: torch.Tensor) -> torch.Tensor:
        """The k channels this layer adds, from the concatenation ``x`` of all earlier ones."""
        out = self.conv1(self.relu1(self.norm1(x)))
        if self.conv2 is not None:
            out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0 and self.training:
            out = out * dropout_mask(out, self.drop_rate)
        return out

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        # The memory-efficient path lives in the block (it needs the whole block's shared buffer).
        return self.new_features(torch.cat(inputs, 1))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; every layer sees the concatenation of the block input and all
    earlier layers' outputs, and the block returns that whole concatenation. One block for the whole
    family: DenseNet-BC's bottleneck layers (``bn_size``) and FC-DenseNet's single-conv layers
    (``bn_size=None``, ``bias=True``) take the same plain, memory-efficient, fused and CUDA-graphed paths."""

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int | None,
        growth_rate: int,
        drop_rate: float,
        dilation: int = 1,
        memory_efficient: bool = False,
        fused: bool | None = None,
        cuda_graphs: bool = False,
        bias: bool = False,
        keep_input: bool = True,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate,
                bn_size,
                drop_rate,
                dilation=dilation,
                memory_efficient=memory_efficient,
                bias=bias,
            )
            self.add_module(f"denselayer{i + 1}", layer)
        self.memory_efficient = memory_efficient
        self.fused = fused
        self.cuda_graphs = cuda_graphs
        self.graphs = BlockGraphs()
        self.num_input_features = num_input_features
        self.growth_rate = growth_rate
        self.keep_input = keep_input  # False: return only the layers' new channels (FC-DenseNet's up path)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        graphable = not (torch.jit.is_tracing() or torch.compiler.is_compiling())  # compile graphs itself
        if self.cuda_graphs and self.training and torch.is_grad_enabled() and graphable:
            # The training forward and its backward replayed as one CUDA graph each (block_graphs).
            return self.graphs(self, self._forward, init_features)
        return self._forward(init_features)

    def _forward(self, init_features: torch.Tensor) -> torch.Tensor:
        layers = list(self.values())
        c0 = 0 if self.keep_input else init_features.shape[1]
        path = dense_path(self.memory_efficient, self.training)  # the rule every dense family follows
        if path == "export":
            out = chained_concat(init_features, [layer.new_features for layer in layers])
            return out if self.keep_input else out[:, c0:]
        if path == "buffer" and supports_efficient(layers):
            # Linear-memory training path: shared buffer and statistics, BN-ReLU recomputed in
            # backward, fused Triton kernels on channels-last CUDA tensors.
            out = efficient_dense_block(init_features, layers, self.fused)
            return out if self.keep_input else out[:, c0:]
        features = [init_features]
        for layer in layers:
            features.append(layer(features))
        return torch.cat(features if self.keep_input else features[1:], 1)


class _Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) then 2x2 average pooling, or no pooling when dilated."""

    def __init__(self, num_input_features: int, num_output_features: int, downsample: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2) if downsample else nn.Identity()

    def forward_with_skip(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output, BN-ReLU of the input): the latter is the block's feature map for decoders.

        The 2x2 average pooling runs before the bias-free 1x1 conv, not after it as in torchvision:
        both are linear, so the result is the same (to float rounding) while the conv sees a
        quarter of the pixels."""
        skip = self.relu(self.norm(x))
        return self.conv(self.pool(skip)), skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_skip(x)[0]


def _init_as_torchvision(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0)


def valid_output_strides(num_blocks: int, initial_output_stride: int = 4) -> list[int]:
    """Output strides a DenseNet with ``num_blocks`` blocks can run at: powers of two from the
    initial output stride up to the nominal one (initial * 2**(num_blocks-1))."""
    return [initial_output_stride * 2**i for i in range(num_blocks)]


def _checked_output_stride(units: list[int], growth_rate: int, theta: float, initial_output_stride: int,
                           fused, cuda_graphs, channels_last, in_channels: int, num_classes: int | None,
                           output_stride: int | None) -> int:
    """Refuse arguments :class:`DenseNet` cannot build; the output stride to build (``None``: the nominal one)."""
    if not units or any(u < 1 for u in units):
        raise ValueError(f"num_units_per_block must be a non-empty list of positive ints, got {units}")
    if growth_rate < 1:
        raise ValueError(f"growth_rate must be positive, got {growth_rate}")
    if not 0.0 < theta <= 1.0:
        raise ValueError(f"theta (compression) must be in (0, 1], got {theta}")
    if initial_output_stride not in (2, 4):
        raise ValueError(f"initial_output_stride must be 2 or 4, got {initial_output_stride}")
    if fused not in (None, True, False):
        raise ValueError(f"fused must be None (auto), True or False, got {fused!r}")
    if cuda_graphs not in (True, False):
        raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
    if channels_last not in (None, True, False):
        raise ValueError(f"channels_last must be None (auto), True or False, got {channels_last!r}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or a positive int, got {num_classes}")
    valid = valid_output_strides(len(units), initial_output_stride)
    if output_stride is None:
        return valid[-1]
    if output_stride not in valid:
        raise ValueError(
            f"output_stride={output_stride} is not valid for this DenseNet "
            f"({len(units)} blocks, initial_output_stride={initial_output_stride}); "
            f"valid output strides: {valid}"
        )
    return output_stride


class DenseNet(FreezableBackbone):
    """DenseNet-BC backbone and classifier.

    Args:
        num_units_per_block: dense layers in each block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
        growth_rate: channels each dense layer adds (k).
        theta: compression of the transitions (output channels = floor(theta * C)).
        num_init_features: stem filters; ``None`` means 2 * growth_rate.
        bn_size: bottleneck width multiplier (the 1x1 conv makes bn_size * k channels).
        drop_rate: dropout after each dense layer.
        num_classes: ``None`` for a feature extractor, else the classifier's classes.
        global_pool: average-pool the final map before the classifier (image classification).
        output_stride: ``None`` for the nominal stride, else a power of two from the initial
            output stride up to the nominal one (see :func:`valid_output_strides`).
        initial_output_stride: 4 for the standard stem (7x7/2 conv + 3x3/2 max-pool), 2 to skip
            the max-pool.
        spatial_squeeze: drop the 1x1 spatial dims of pooled outputs, giving (N, C).
        memory_efficient: train with linear memory: each dense block writes into one shared
            buffer and recomputes its BN-ReLU outputs in backward (see ``efficient_block``).
        in_channels: channels of the input image.
        channels_last: run the network in the channels-last memory format. ``None`` (auto): on
            CPU inputs only, where oneDNN's convolutions and the BN kernels are faster in it
            (measured in docs/backbones.md); CUDA inputs keep the format they arrive in (the trainer picks
            channels-last there under AMP). Values are the same up to float rounding; the
            returned feature maps are then channels-last tensors. Tracing (ONNX/TorchScript
            export) records the plain graph.
        fused: for ``memory_efficient`` training, run the BatchNorm-ReLU traffic of the dense
            blocks as Triton kernels (``backbones.fused_kernels``; on CPU only under
            ``TRITON_INTERPRET=1``, for tests). ``None``/``False``: PyTorch operators. Opt-in: on
            an H100 the kernels measured no faster than PyTorch's yet (docs/benchmarks.md).
        cuda_graphs: in training on CUDA, capture each dense block's forward and backward as CUDA
            graphs and replay them (``backbones.block_graphs``): one launch per block and
            direction instead of dozens per layer. Captured per input signature on first use
            (eager warm-up passes whose BatchNorm updates are undone). Needs CUDA inputs and
            BatchNorm with a numeric momentum. Opt-in until measured on a GPU.
        norm_eval: keep every BatchNorm in eval mode while training (running statistics used, none updated;
            ``backbones.freezing``): for small per-GPU batches and fine-tuning from pretrained weights. The
            memory-efficient blocks honour each BatchNorm's mode, so they stay memory-efficient.
        frozen_stages: -1 trains everything; 0 freezes the stem (conv0, norm0); n freezes the stem and dense
            blocks 1..n with their transitions (norm5 with the last block): no gradients, BatchNorms in eval mode.
        final_transition: after the last block, one more transition (BN-ReLU-1x1 conv to ``theta`` of the
            channels, never pooling) before ``norm5`` (then ReLU): the backbone of the DenseASPP authors'
            network (with ``head=denseaspp original=true``). It is ``features.transition{n}`` for ``n`` blocks, as
            in their checkpoints.
    """

    def __init__(
        self,
        num_units_per_block: Sequence[int] = (6, 12, 24, 16),
        growth_rate: int = 32,
        theta: float = 0.5,
        num_init_features: int | None = None,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int | None = None,
        global_pool: bool = True,
        output_stride: int | None = None,
        initial_output_stride: int = 4,
        spatial_squeeze: bool = True,
        memory_efficient: bool = False,
        in_channels: int = 3,
        channels_last: bool | None = None,
        fused: bool | None = None,
        cuda_graphs: bool = False,
        norm_eval: bool = False,
        frozen_stages: int = -1,
        final_transition: bool = False,
    ) -> None:
        super().__init__()
        units = [int(u) for u in num_units_per_block]
        output_stride = _checked_output_stride(units, growth_rate, theta, initial_output_stride, fused, cuda_graphs,
                                               channels_last, in_channels, num_classes, output_stride)
        check_freezing(norm_eval, frozen_stages, len(units))
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        if num_init_features is None:
            num_init_features = 2 * growth_rate

        self.num_units_per_block = tuple(units)
        self.growth_rate = growth_rate
        self.theta = theta
        self.output_stride = output_stride
        self.initial_output_stride = initial_output_stride
        self.global_pool = global_pool
        self.spatial_squeeze = spatial_squeeze
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.channels_last = channels_last
        self.fused = fused
        self.cuda_graphs = cuda_graphs
        self.final_transition = bool(final_transition)
        channels = self._build_features(num_init_features, bn_size, drop_rate, memory_efficient)
        self.classifier = nn.Linear(channels, num_classes) if num_classes is not None else None

        _init_as_torchvision(self)
        self.train()

    def stages(self) -> list[list[nn.Module]]:
        """The stem, then each dense block with the transition after it (the last block with norm5): the units
        ``frozen_stages`` counts."""
        f = self.features
        out = [[f.conv0, f.norm0]]
        for i in range(len(self.num_units_per_block)):
            last = i == len(self.num_units_per_block) - 1
            after = [getattr(f, f"transition{i + 1}")] if not last or self.final_transition else []
            out.append([getattr(f, f"denseblock{i + 1}"), *after, *([f.norm5] if last else [])])
        return out

    @property
    def num_stages(self) -> int:
        """The dense blocks (each with the transition after it): what ``stage_of`` counts after the stem."""
        return len(self.num_units_per_block)

    def stage_of(self, param_name: str) -> int:
        """0 for a stem parameter, ``i + 1`` for one of dense block ``i`` or the transition after it (norm5 with the
        last block); names relative to this backbone. Stage-wise learning-rate decay reads it."""
        return stage_of_parameter(self, self.stages(), param_name)

    def _build_features(self, num_init_features: int, bn_size: int, drop_rate: float,
                        memory_efficient: bool) -> int:
        """The stem, dense blocks and transitions (``self.features``) and ``feature_info``; returns the channels
        of the last block."""
        stem = [
            ("conv0", nn.Conv2d(self.in_channels, num_init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
        ]
        if self.initial_output_stride == 4:
            stem.append(("pool0", nn.MaxPool2d(3, stride=2, padding=1)))
        self.features = nn.Sequential(OrderedDict(stem))

        feature_info = [FeatureSpec("stem", num_init_features, 2)]
        stride, dilation = self.initial_output_stride, 1
        channels = num_init_features
        units = self.num_units_per_block
        for i, num_layers in enumerate(units):
            block = DenseBlock(
                num_layers, channels, bn_size, self.growth_rate, drop_rate, dilation, memory_efficient, self.fused,
                self.cuda_graphs,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            channels += num_layers * self.growth_rate
            feature_info.append(FeatureSpec(f"block{i + 1}", channels, stride))
            if i == len(units) - 1 and self.final_transition:
                out_channels = int(channels * self.theta)
                self.features.add_module(f"transition{i + 1}", _Transition(channels, out_channels, False))
                channels = out_channels
                feature_info[-1] = FeatureSpec(f"block{i + 1}", channels, stride)
            elif i != len(units) - 1:
                downsample = stride < self.output_stride
                out_channels = int(channels * self.theta)
                self.features.add_module(
                    f"transition{i + 1}", _Transition(channels, out_channels, downsample)
                )
                channels = out_channels
                if downsample:
                    stride *= 2
                else:
                    dilation *= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.num_features = channels
        self.feature_info = feature_info
        return channels

    @property
    def min_input_size(self) -> int:
        """Smallest height/width the network accepts (every feature map stays non-empty)."""
        return self.output_stride

    def _check_input(self, x: torch.Tensor) -> None:
        check_image_batch(x, self.in_channels, self.min_input_size, f"at output_stride={self.output_stride}")

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Feature maps for decoders, shallow to deep, named and sized as ``feature_info`` says:
        the stride-2 stem map, then each block's output at full width (BN-ReLU applied)."""
        self._check_input(x)
        if use_channels_last(self.channels_last, x):
            x = x.contiguous(memory_format=torch.channels_last)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        f = self.features
        x = f.relu0(f.norm0(f.conv0(x)))
        out["stem"] = x
        if self.initial_output_stride == 4:
            x = f.pool0(x)
        num_blocks = len(self.num_units_per_block)
        for i in range(num_blocks):
            x = getattr(f, f"denseblock{i + 1}")(x)
            if i != num_blocks - 1:
                x, skip = getattr(f, f"transition{i + 1}").forward_with_skip(x)
                out[f"block{i + 1}"] = skip
            elif self.final_transition:
                out[f"block{i + 1}"] = F.relu(f.norm5(getattr(f, f"transition{i + 1}")(x)))
            else:
                out[f"block{i + 1}"] = F.relu(f.norm5(x))
        return out

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooling and classifier on the final (BN-ReLU) feature map, as the seed library does."""
        if self.global_pool:
            x = F.adaptive_avg_pool2d(x, 1)
        if self.classifier is not None:
            # The Linear classifier applied at every position: a 1x1 convolution with its weights.
            w = self.classifier.weight
            x = F.conv2d(x, w.view(w.shape[0], w.shape[1], 1, 1), self.classifier.bias)
        if self.global_pool and self.spatial_squeeze:
            x = torch.flatten(x, 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits when ``num_classes`` is set, otherwise the final feature map (pooled when
        ``global_pool``)."""
        return self.forward_head(self.forward_features(x)[f"block{len(self.num_units_per_block)}"])


def _densenet(
    arch: str | None,
    num_units_per_block: Sequence[int],
    growth_rate: int,
    num_init_features: int | None,
    pretrained: str | None = None,
    **kwargs,
) -> DenseNet:
    model = DenseNet(num_units_per_block, growth_rate, num_init_features=num_init_features, **kwargs)
    if pretrained:
        load_pretrained(model, pretrained, arch=arch)
    return model


@register_backbone(kwargs_to=DenseNet)
def densenet121(pretrained: str | None = None, **kwargs) -> DenseNet:
    """DenseNet-121 (k=32, units 6-12-24-16). ``pretrained``: a checkpoint path or ``"imagenet"``.
    Other keyword arguments are :class:`DenseNet`'s."""
    return _densenet("densenet121", (6, 12, 24, 16), 32, 64, pretrained, **kwargs)


@register_backbone(kwargs_to=DenseNet)
def densenet169(pretrained: str | None = None, **kwargs) -> DenseNet:
    """DenseNet-169 (k=32, units 6-12-32-32)."""
    return _densenet("densenet169", (6, 12, 32, 32), 32, 64, pretrained, **kwargs)


@register_backbone(kwargs_to=DenseNet)
def densenet201(pretrained: str | None = None, **kwargs) -> DenseNet:
    """DenseNet-201 (k=32, units 6-12-48-32)."""
    return _densenet("densenet201", (6, 12, 48, 32), 32, 64, pretrained, **kwargs)


@register_backbone(kwargs_to=DenseNet)
def densenet161(pretrained: str | None = None, **kwargs) -> DenseNet:
    """DenseNet-161 (k=48, units 6-12-36-24, 96 stem filters)."""
    return _densenet("densenet161", (6, 12, 36, 24), 48, 96, pretrained, **kwargs)


@register_backbone(kwargs_to=DenseNet)
def densenet_custom(
    num_units_per_block: Sequence[int] = (6, 12, 24, 16),
    growth_rate: int = 32,
    theta: float = 0.5,
    bn_size: int = 4,
    drop_rate: float = 0.0,
    num_init_features: int | None = None,
    in_channels: int = 3,
    pretrained: str | None = None,
    **kwargs,
) -> DenseNet:
    """Any DenseNet-BC: the seed library's ``densenet_X``. ``num_init_features`` defaults to
    2 * growth_rate. ``pretrained`` takes a checkpoint path of the same architecture."""
    return _densenet(
        None,
        num_units_per_block,
        growth_rate,
        num_init_features,
        pretrained,
        theta=theta,
        bn_size=bn_size,
        drop_rate=drop_rate,
        in_channels=in_channels,
        **kwargs,
    )
