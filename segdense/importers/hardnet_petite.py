"""The FC-HarDNet authors' ImageNet encoder, ``weights/hardnet_petite_base.pth`` (PingoLH/FCHarDNet): the
state_dict of their model's ``base`` (``0.conv.weight``, ``4.layers.0.conv.weight`` ...), which their ``train.py``
loads with ``model.base.load_state_dict``. It becomes the encoder part of ``fchardnet70``'s weights (``base.*``),
which ``backbone.pretrained`` loads; the decoder keeps its initialisation. The first conv's input channels are
reversed, as for their training checkpoints (:mod:`.fchardnet_ptsemseg`): their pipeline feeds it BGR images."""
from __future__ import annotations

import re

import torch

from segdense.backbones.fchardnet import petite_encoder_weights
from segdense.errors import ConfigError

from .fchardnet_ptsemseg import BGR_NOTE
from .result import Imported

NAME = "hardnet-petite"
DESCRIPTION = "the FC-HarDNet authors' ImageNet encoder hardnet_petite_base.pth (0.conv.*, 4.layers.N.conv.*)"


def matches(state: dict[str, torch.Tensor]) -> bool:
    return "0.conv.weight" in state and all(re.match(r"\d+\.", k) for k in state)


def import_checkpoint(checkpoint: dict, path, backbone: str | None, keep_aux: bool, output_stride: int) -> Imported:
    if backbone not in (None, "fchardnet70"):
        raise ConfigError(f"backbone={backbone}: {path} is FC-HarDNet-70's encoder (backbone=fchardnet70)")
    weights = petite_encoder_weights(checkpoint["state_dict"])
    return Imported(layout=NAME, weights=weights, backbone={"name": "fchardnet70"}, part="base.",
                    notes=[BGR_NOTE, "the encoder only (base.*): the decoder starts from its initialisation"])
