"""Loading RDNet ImageNet weights: timm's files (``stem.0.*``, ``dense_stages.N.*``), the authors' hub files
(``stem.stem.0.*``) and timm ``features_only`` spellings (``stem_0.*``, ``dense_stages_N.*``)."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from segdense.errors import CheckpointError

from .weights import adapt_input_conv, read_state_dict, state_dict_mismatch

logger = logging.getLogger(__name__)

_FLAT = re.compile(r"^(stem|dense_stages)_(\d+)\.")


def rdnet_timm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An RDNet state_dict with timm's key names: the authors' ``stem.stem.`` becomes ``stem.``, and the flattened
    ``features_only`` names ``stem_0.``/``dense_stages_3.`` become ``stem.0.``/``dense_stages.3.``."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("stem.stem."):
            key = "stem." + key[len("stem.stem."):]
        key = _FLAT.sub(lambda m: f"{m.group(1)}.{m.group(2)}.", key)
        out[key] = value
    return out


def load_rdnet_pretrained(model: nn.Module, pretrained: str | os.PathLike, arch: str | None = None) -> None:
    """Load an RDNet ImageNet file (timm's ``.safetensors``/``.pth`` or the authors') into ``model`` strictly: every
    backbone tensor present and of the right shape. The file's classifier (``head.*``) is dropped, with a log line,
    when the model has none or one of another size; a different ``in_channels`` adapts the stem."""
    path = Path(pretrained)
    state = rdnet_timm_keys(read_state_dict(path))
    own = model.state_dict()
    for key in [k for k in state if k.startswith("head.")]:
        if key not in own or own[key].shape != state[key].shape:
            del state[key]
            logger.info("pretrained weights %s: dropped %s (this model has no classifier of that size)", path, key)
    stem = "stem.0.weight"
    if stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_input_conv(state[stem], own[stem].shape[1])
    problems = state_dict_mismatch(own, state)
    if problems:
        raise CheckpointError(f"pretrained weights {path} do not fit this model ({arch or 'rdnet_custom'} with "
                              f"growth rates {getattr(model, 'arch', {}).get('growth_rates', '?')}): {problems}")
    model.load_state_dict(state, strict=True)
