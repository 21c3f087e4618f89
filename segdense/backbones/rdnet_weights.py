"""Loading RDNet ImageNet weights: timm's files (``stem.0.*``, ``dense_stages.N.*``), the authors' hub files
(``stem.stem.0.*``) and timm ``features_only`` spellings (``stem_0.*``, ``dense_stages_N.*``); ``"imagenet"``
downloads timm's published file of a named RDNet from the HF hub."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from segdense.errors import CheckpointError, ConfigError

from .weights import adapt_input_conv, download_weights, read_state_dict, state_dict_mismatch

logger = logging.getLogger(__name__)

_FLAT = re.compile(r"^(stem|dense_stages)_(\d+)\.")
# timm's pretrained_cfg of each named RDNet (timm.models.rdnet, tag nv_in1k): the HF hub repository of its ImageNet
# weights. Each holds one file, pytorch_model.bin: the authors' key names (stem.stem.*), classifier included.
IMAGENET_HUB_IDS = {name: f"naver-ai/{name}.nv_in1k" for name in ("rdnet_tiny", "rdnet_small", "rdnet_base",
                                                                    "rdnet_large")}
HUB_FILE = "pytorch_model.bin"
HF_ENDPOINT = "https://huggingface.co"


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


def imagenet_url(arch: str) -> str:
    """Where timm's ImageNet weights of ``arch`` are: its HF hub file, on the hub or on the mirror the environment
    variable ``HF_ENDPOINT`` names (huggingface_hub's own; e.g. https://hf-mirror.com)."""
    endpoint = os.environ.get("HF_ENDPOINT") or HF_ENDPOINT
    return f"{endpoint.rstrip('/')}/{IMAGENET_HUB_IDS[arch]}/resolve/main/{HUB_FILE}"


def download_rdnet_imagenet(arch: str | None) -> Path:
    """timm's ImageNet file of the named RDNet ``arch`` in the torch hub cache (downloaded and checked against the
    SHA256 the hub publishes for it, the first time)."""
    if arch not in IMAGENET_HUB_IDS:
        raise ConfigError(f"pretrained='imagenet' needs a named RDNet: {', '.join(IMAGENET_HUB_IDS)} (timm's "
                          "ImageNet weights); pass pretrained=PATH to load a file of this architecture instead")
    return download_weights(imagenet_url(arch), arch, filename=f"{IMAGENET_HUB_IDS[arch].split('/')[1]}.bin")


def load_rdnet_pretrained(model: nn.Module, pretrained: str | os.PathLike, arch: str | None = None) -> None:
    """Load an RDNet ImageNet file (timm's ``.safetensors``/``.pth`` or the authors'; ``"imagenet"`` for timm's
    published file of the named ``arch``) into ``model`` strictly: every backbone tensor present and of the right
    shape. The file's classifier (``head.*``) is dropped, with a log line, when the model has none or one of another
    size; a different ``in_channels`` adapts the stem."""
    path = download_rdnet_imagenet(arch) if str(pretrained) == "imagenet" else Path(pretrained)
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
