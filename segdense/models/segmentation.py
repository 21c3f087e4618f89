"""The segmentation model: a backbone, a decoder head and an optional auxiliary head."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..heads.common import resize_to
from ..tasks import class_argmax


class SegmentationModel(nn.Module):
    """Backbone features -> head logits, upsampled (bilinear, ``align_corners=False`` unless the head has
    ``align_corners`` true) to exactly the input's height and width.

    ``forward`` returns a tensor (N, num_classes, H, W), except in training mode with an aux head,
    where it returns ``{"out": logits, "aux": aux_logits}`` as torchvision's segmentation models do.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None):
        super().__init__()
        missing = [a for a in ("feature_info", "forward_features") if not hasattr(backbone, a)]
        if missing:
            raise TypeError(
                f"{type(backbone).__name__} is not a segdense backbone: it lacks {', '.join(missing)} "
                "(a backbone needs feature_info, forward_features(x) and output_stride)"
            )
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.model_config: dict = {}  # set by build_model: the arguments that rebuild this model

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"expected an image batch of shape (N, C, H, W), got {tuple(x.shape)}")
        size = x.shape[-2:]
        features = self.backbone.forward_features(x)
        out = resize_to(self.head(features), size, getattr(self.head, "align_corners", False))
        if self.training and self.aux_head is not None:
            return {"out": out, "aux": resize_to(self.aux_head(features), size)}
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices (N, H, W) under ``torch.inference_mode()``, computed in eval mode (the
        model's previous train/eval mode is restored afterwards)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return class_argmax(self(x), 1)
        finally:
            self.train(was_training)

