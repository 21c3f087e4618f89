"""Build the network a benchmark row measures, and its training loss."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import densenet as tvd
from torchvision.models import segmentation

from omegaconf import OmegaConf

from segdense import build_model
from segdense.backbones import build_backbone
from segdense.backbones.registry import BACKBONES
from segdense.config.overrides import CONF_DIR
from segdense.heads import build_head
from segdense.heads.registry import HEADS
from segdense.models import SegmentationModel

from .config import Row
from .timm_backbone import TimmFeatures


def dilate_torchvision_densenet(features: nn.Module, output_stride: int, initial_stride: int = 4) -> None:
    """Apply segdense's output-stride rule to torchvision's ``DenseNet.features`` in place: a
    transition past the output stride keeps BN+conv but drops its pooling, and every 3x3 conv
    after it is dilated (x2 per skipped pooling)."""
    stride, dilation = initial_stride, 1
    for name, module in features.named_children():
        if name.startswith("denseblock") and dilation > 1:
            for layer in module.children():
                layer.conv2.dilation = (dilation, dilation)
                layer.conv2.padding = (dilation, dilation)
        if name.startswith("transition"):
            if stride < output_stride:
                stride *= 2
            else:
                module.pool = nn.Identity()
                dilation *= 2


class _TorchvisionFeatures(nn.Module):
    def __init__(self, row: Row) -> None:
        super().__init__()
        if row.backbone == "densenet_custom":
            net = tvd.DenseNet(growth_rate=row.growth_rate, block_config=row.units,
                               num_init_features=2 * row.growth_rate, memory_efficient=row.memory_efficient)
        else:
            builder = getattr(tvd, row.backbone, None)
            if builder is None:
                raise ValueError(f"torchvision has no {row.backbone!r}")
            net = builder(weights=None, memory_efficient=row.memory_efficient)
        dilate_torchvision_densenet(net.features, row.output_stride)
        self.features = net.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))


def _dense_options(row: Row) -> dict:
    """The row's dense-block options that differ from the model's defaults."""
    options = {} if row.fused is None else {"fused": row.fused}
    if row.cuda_graphs:
        options["cuda_graphs"] = True
    return options


class _SegdenseFeatures(nn.Module):
    def __init__(self, row: Row) -> None:
        super().__init__()
        self.net = build_backbone(row.backbone, **backbone_kwargs(row))
        self.last = self.net.feature_info[-1].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)[self.last]


def backbone_kwargs(row: Row) -> dict:
    """The segdense backbone builder's arguments for ``row`` (with or without a head)."""
    kw = dict(output_stride=row.output_stride, memory_efficient=row.memory_efficient, **_dense_options(row))
    accepted = BACKBONES.signature(row.backbone)[0]
    if "output_stride" not in accepted:  # FC-DenseNets (full resolution), FC-HarDNet (stride 4)
        del kw["output_stride"]
    if "memory_efficient" not in accepted:
        if row.memory_efficient:
            raise ValueError(f"{row.backbone} has no memory-efficient mode")
        del kw["memory_efficient"]
    if row.backbone == "densenet_custom":
        kw.update(num_units_per_block=row.units, growth_rate=row.growth_rate)
    return kw


def head_block(head: str) -> str | dict:
    """A registered head's name as it is, or the block of the ``conf/head/`` option of that name (``fchardnet``:
    the tiramisu head with the FC-HarDNet authors' ``align_corners=True``)."""
    path = CONF_DIR / "head" / f"{head}.yaml"
    if head in HEADS or not path.is_file():
        return head
    return OmegaConf.to_container(OmegaConf.load(path))


def _segdense_model(row: Row) -> nn.Module:
    return build_model(row.backbone, head_block(row.head), num_classes=row.num_classes, **backbone_kwargs(row))


def _timm_model(row: Row) -> nn.Module:
    """timm's backbone (grad-checkpointed for memory-efficient rows) under the row's segdense head."""
    net = TimmFeatures(row.backbone, grad_checkpointing=row.memory_efficient)
    head = build_head(row.head, net.feature_info, row.num_classes, net.output_stride)
    return SegmentationModel(net, head)


def _peer_model(row: Row) -> nn.Module:
    return getattr(segmentation, row.backbone)(weights=None, weights_backbone=None,
                                                num_classes=row.num_classes, aux_loss=False)


def build(row: Row) -> nn.Module:
    """The row's network on its device (and memory format), in training mode."""
    if row.impl == "peer":
        model = _peer_model(row)
    elif row.impl == "timm":
        model = _timm_model(row)
    elif row.head is not None:
        model = _segdense_model(row)
    elif row.impl == "torchvision":
        model = _TorchvisionFeatures(row)
    else:
        model = _SegdenseFeatures(row)
    model = model.to(row.device)
    if row.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_input(row: Row, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch and a random label map (the training input)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(row.batch, 3, *row.size, generator=g)
    y = torch.randint(0, row.num_classes, (row.batch, *row.size), generator=g)
    return _placed(row, x), y.to(row.device)


def make_inference_input(row: Row, seed: int = 0) -> torch.Tensor:
    """The inference input: the training input's images, or one random image of ``row.infer_size``."""
    if row.infer_size is None:
        return make_input(row, seed)[0]
    g = torch.Generator().manual_seed(seed)
    return _placed(row, torch.randn(1, 3, *row.infer_size, generator=g))


def _placed(row: Row, x: torch.Tensor) -> torch.Tensor:
    x = x.to(row.device)
    return x.contiguous(memory_format=torch.channels_last) if row.channels_last else x


def loss_of(row: Row, out: torch.Tensor | dict, y: torch.Tensor) -> torch.Tensor:
    """Backbone rows: mean of the deepest feature map. Head rows: cross-entropy on the logits
    (upsampled to the label size when the head returns them smaller)."""
    if isinstance(out, dict):
        out = out["out"] if "out" in out else next(iter(out.values()))
    if row.head is None:
        return out.float().mean()
    if out.shape[-2:] != y.shape[-2:]:
        out = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(out.float(), y)
