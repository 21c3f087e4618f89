"""Backbone arguments read off a state_dict's shapes (RDNet, DenseNet), and the named builder they equal.

The functions here see only tensor shapes in segdense's names; the importers call them after renaming.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable

import torch

from segdense.backbones.registry import BACKBONES
from segdense.errors import CheckpointError

_RDNET_STAGE = re.compile(r"^dense_stages\.(\d+)\.")
_DENSE_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.")
RDNET_NAMES = ("rdnet_tiny", "rdnet_small", "rdnet_base", "rdnet_large")
DENSENET_NAMES = ("densenet121", "densenet169", "densenet201", "densenet161")


def shape_of(state: dict[str, torch.Tensor], key: str, path) -> torch.Size:
    if key not in state:
        raise CheckpointError(f"{path} lacks {key}, which every file of its layout has")
    return state[key].shape


def _ratio(pairs: list[tuple[int, int]], default: float) -> float:
    """The ratio r with int(c * r / 8) * 8 == out for every (c, out): the default where it fits, else the first
    pair's own ratio where that fits all (None when nothing does)."""
    for r in (default, pairs[0][1] / pairs[0][0] if pairs else default):
        if all(int(c * r / 8) * 8 == out for c, out in pairs):
            return r
    return None


def rdnet_arguments(state: dict[str, torch.Tensor], path) -> dict:
    """``rdnet_custom``'s arguments for an RDNet state_dict in timm's names (``stem.0``, ``dense_stages.N``):
    stem width and patch size from the stem conv, a stage downsamples where its transition conv is 2x2, growth
    rate and ESE from each stage's first layer, layers per stage by counting them."""
    stem = shape_of(state, "stem.0.weight", path)
    stages = sorted({int(m.group(1)) for k in state if (m := _RDNET_STAGE.match(k))})
    if stages != list(range(len(stages))) or not stages:
        raise CheckpointError(f"{path}: its RDNet stages are numbered {stages}, expected 0, 1, 2, ...")
    growth, blocks, down, kinds, widths, transitions = [], [], [], [], [], []
    for i in stages:
        prefix = f"dense_stages.{i}.{2 if i else 0}."
        if i:
            conv = shape_of(state, f"dense_stages.{i}.1.weight", path)
            transitions.append((conv[1], conv[0]))
        down.append(bool(i) and conv[-1] > 1)
        count = sum(1 for k in state if re.match(rf"{re.escape(prefix)}dense_block\d+\.layers\.layers\.0\.weight$", k))
        layer = f"{prefix}dense_block0.layers.layers."
        growth.append(int(shape_of(state, layer + "4.weight", path)[0]))
        kinds.append("BlockESE" if layer + "5.fc.weight" in state else "Block")
        blocks.append(count)
        widths += [tuple(shape_of(state, f"{prefix}dense_block{j}.layers.layers.2.weight", path)[1::-1])
                   for j in range(count)]
    arguments = {"growth_rates": growth, "num_blocks_list": blocks, "is_downsample_block": down,
                 "block_type": kinds, "num_init_features": int(stem[0])}
    extra = {"patch_size": (int(stem[-1]), 4), "in_channels": (int(stem[1]), 3),
             "bottleneck_width_ratio": (_ratio(widths, 4.0), 4.0),
             "transition_compression_ratio": (_ratio(transitions, 0.5), 0.5),
             "ls_init_value": (1e-6 if any(k.endswith(".gamma") for k in state) else 0.0, 1e-6)}
    for name, (value, default) in extra.items():
        if value is None:
            raise CheckpointError(f"{path}: no {name} gives its layers' widths; not an RDNet segdense can build")
        if value != default:
            arguments[name] = value
    return arguments


def densenet_arguments(state: dict[str, torch.Tensor], path) -> dict:
    """``densenet_custom``'s arguments for a DenseNet state_dict in torchvision's names."""
    units: dict[int, set[int]] = {}
    for key in state:
        if m := _DENSE_LAYER.match(key):
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not units:
        raise CheckpointError(f"{path} holds no features.denseblock*.denselayer* weights")
    conv1 = shape_of(state, "features.denseblock1.denselayer1.conv1.weight", path)
    growth = int(shape_of(state, "features.denseblock1.denselayer1.conv2.weight", path)[0])
    stem = shape_of(state, "features.conv0.weight", path)
    arguments = {"num_units_per_block": [len(units[b]) for b in sorted(units)], "growth_rate": growth,
                 "num_init_features": int(stem[0])}
    if conv1[0] != 4 * growth:
        arguments["bn_size"] = int(conv1[0]) // growth
    if stem[1] != 3:
        arguments["in_channels"] = int(stem[1])
    return arguments


def chosen_block(backbone: str | dict | None, names: tuple[str, ...], custom: str, arguments) -> dict:
    """The backbone block: the user's (a name or a block; ``pretrained`` left out, the weights being the file's),
    else the named variant whose shapes equal ``state``'s, else ``custom`` with ``arguments(state, path)``."""
    if backbone is not None:
        block = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
        block.pop("pretrained", None)
        return block
    state, path = arguments
    inferred = (rdnet_arguments if custom == "rdnet_custom" else densenet_arguments)(state, path)
    name = named_variant(names, state)
    return {"name": name} if name else {"name": custom, **inferred}


def model_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of ``build()``'s model, built on the meta device (no memory, no initialisation
    cost)."""
    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def named_variant(names: tuple[str, ...], state: dict[str, torch.Tensor], **kwargs) -> str | None:
    """The first of the registered builders ``names`` whose model (built with ``kwargs``) has exactly ``state``'s
    keys and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in names:
        if name in BACKBONES.names() and model_shapes(partial(BACKBONES.get(name), **kwargs)) == shapes:
            return name
    return None
