"""timm's ``features_only`` models as segdense backbones, so a segdense head can sit on them in a benchmark row."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from segdense.backbones.features import FeatureSpec


class TimmFeatures(nn.Module):
    """``timm.create_model(name, features_only=True)`` with what segdense's heads read: ``feature_info`` as
    :class:`FeatureSpec` s (named ``stage1`` ..., as segdense's RDNet names them), ``output_stride`` and
    ``forward_features`` returning an OrderedDict. ``grad_checkpointing``: timm's ``set_grad_checkpointing()``
    (each stage but the first and last module recomputed in backward by ``torch.utils.checkpoint``)."""

    def __init__(self, name: str, grad_checkpointing: bool = False) -> None:
        super().__init__()
        import timm  # benchmark-only dependency

        self.net = timm.create_model(name, features_only=True, pretrained=False)
        self.net.set_grad_checkpointing(grad_checkpointing)
        info = self.net.feature_info
        self.feature_info = [FeatureSpec(f"stage{i + 1}", c, s)
                             for i, (c, s) in enumerate(zip(info.channels(), info.reduction()))]
        self.output_stride = self.feature_info[-1].stride

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((spec.name, f) for spec, f in zip(self.feature_info, self.net(x)))
