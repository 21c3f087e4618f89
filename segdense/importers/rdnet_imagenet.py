"""RDNet ImageNet files: timm's (``stem.0.*``, ``dense_stages.N.*``, ``.safetensors`` or ``.pth``), the authors'
hub files (``stem.stem.0.*``) and timm's features_only spelling (``dense_stages_N.*``). The key mapping is the
backbone's own (``segdense.backbones.rdnet_weights``), the one ``pretrained=`` uses."""
from __future__ import annotations

import torch

from segdense.backbones.rdnet_weights import rdnet_timm_keys

from .architecture import RDNET_NAMES, chosen_block
from .result import Imported

NAME = "rdnet-imagenet"
DESCRIPTION = "RDNet ImageNet weights (timm's stem.0.*/dense_stages.N.*, the authors' stem.stem.0.*)"
CLASSIFIER = "head."


def matches(state: dict[str, torch.Tensor]) -> bool:
    return (any(k.startswith(("stem.0.", "stem.stem.0.", "stem_0.")) for k in state)
            and any(k.startswith("dense_stages") for k in state))


def rename(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm's names without the ImageNet classifier (``head.norm``, ``head.fc``), and the classifier keys left
    out."""
    weights = rdnet_timm_keys(state)
    dropped = [k for k in weights if k.startswith(CLASSIFIER)]
    return {k: v for k, v in weights.items() if not k.startswith(CLASSIFIER)}, dropped


def import_checkpoint(checkpoint: dict, path, backbone: str | None, keep_aux: bool, output_stride: int) -> Imported:
    weights, dropped = rename(checkpoint["state_dict"])
    notes = [f"left out the ImageNet classifier ({', '.join(dropped)}): segmentation does not use it"
             ] if dropped else []
    block = chosen_block(backbone, RDNET_NAMES, "rdnet_custom", (weights, path))
    return Imported(layout=NAME, weights=weights, backbone=block, notes=notes)
