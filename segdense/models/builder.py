"""``build_model``: any registered backbone + any registered head, each from its config block passed as is."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ..backbones.registry import BACKBONES
from ..heads.registry import build_head
from .segmentation import SegmentationModel


def _jsonable(value, what: str):
    """Tuples become lists; anything JSON cannot hold is an error (model_config must round-trip)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{what}.{k}") for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{what}={value!r} is not a plain JSON value (str, number, bool, None, list, dict); "
            "build_model takes plain arguments so that model.model_config can rebuild the model"
        ) from None
    return value


def _block(part: str | Mapping[str, Any], kind: str) -> dict:
    """A config block ``{"name": ..., **constructor arguments}``; a bare name is a block without arguments."""
    block = {"name": part} if isinstance(part, str) else dict(part)
    if "name" not in block:
        raise ValueError(f"the {kind} block {block} has no 'name' (the registered {kind} to build)")
    return block


def _model_config(backbone_block: dict, head_block: dict, num_classes: int, aux_loss: bool,
                  aux_head: Mapping[str, Any] | None) -> dict:
    """``model.model_config``: the JSON-serialisable arguments that rebuild the model (``pretrained`` left out)."""
    config = {
        "backbone": _jsonable({k: v for k, v in backbone_block.items() if k != "pretrained"}, "backbone"),
        "head": _jsonable(head_block, "head"),
        "num_classes": num_classes,
        "aux_loss": bool(aux_loss),
    }
    if aux_head is not None:
        if not aux_loss:
            raise ValueError("aux_head configures the auxiliary head: it needs aux_loss=True")
        config["aux_head"] = _jsonable(dict(aux_head), "aux_head")
    return config


DEFAULT_OUTPUT_STRIDE = 16  # conf/config.yaml's


def _backbone_block(backbone, output_stride: int | None, backbone_kwargs: dict) -> dict:
    """The backbone block with the keyword arguments merged in and the output stride set where it applies."""
    block = {**_block(backbone, "backbone"), **backbone_kwargs}
    if output_stride is not None:
        block.setdefault("output_stride", output_stride)
    elif "output_stride" in BACKBONES.signature(block["name"])[0]:
        block.setdefault("output_stride", DEFAULT_OUTPUT_STRIDE)
    return block


def build_model(
    backbone: str | Mapping[str, Any] = "densenet121",
    head: str | Mapping[str, Any] = "deeplabv3plus_lite",
    num_classes: int = 21,
    aux_loss: bool = False,
    output_stride: int | None = None,
    aux_head: Mapping[str, Any] | None = None,
    **backbone_kwargs: Any,
) -> SegmentationModel:
    """Build a :class:`SegmentationModel` from registered names, as timm's ``create_model`` does. The defaults are
    the model ``python tools/train.py`` trains: densenet121, output stride 16, ``deeplabv3plus_lite``, no aux head.

    Args:
        backbone: a registered backbone (``segdense.backbones.list_backbones()``), or a config block
            ``{"name": ..., **its builder's arguments}`` (``conf/backbone/*.yaml``), passed through as is.
        head: a registered head (``segdense.heads.list_heads()``), or a block ``{"name": ..., **its arguments}``.
        num_classes: classes of the logits (>= 1).
        aux_loss: add the FCN auxiliary head on the stride-16 feature (training output becomes
            ``{"out", "aux"}``).
        aux_head: the aux head's arguments (``channels``, ``num_convs``, ``dropout``, ``in_feature``) where they
            are not its defaults (256 channels, one conv), e.g. for an imported checkpoint's; needs ``aux_loss``.
        output_stride: the backbone's, unless its block sets one. ``None``: 16 for backbones that take an output
            stride (what the command line trains); FC-DenseNets, which have none, are left alone.
        **backbone_kwargs: more backbone arguments (``pretrained``, ``memory_efficient``, ``growth_rate`` ...),
            merged into the backbone block.

    The model's ``model_config`` holds the JSON-serialisable arguments that rebuild the same architecture,
    ``build_model(**model.model_config)``, without ``pretrained`` (the weights are the model's own).
    """
    backbone_block = _backbone_block(backbone, output_stride, backbone_kwargs)
    head_block = _block(head, "head")
    config = _model_config(backbone_block, head_block, num_classes, aux_loss, aux_head)
    name = backbone_block.pop("name")
    net = BACKBONES.get(name)(**backbone_block)
    feature_info = getattr(net, "feature_info", None)
    if not feature_info:
        raise TypeError(
            f"backbone {name!r} built a {type(net).__name__} without a non-empty feature_info; "
            "a backbone needs feature_info, forward_features(x) and output_stride"
        )
    stride = net.output_stride
    main = build_head(head_block.pop("name"), feature_info, num_classes, stride, **head_block)
    aux = build_head("aux", feature_info, num_classes, stride, **(aux_head or {})) if aux_loss else None
    model = SegmentationModel(net, main, aux)
    model.model_config = config
    return model


# Backbone options added after checkpoints were first written; they select training modes, not the architecture,
# and their defaults are what those checkpoints trained with.
LATER_BACKBONE_OPTIONS = {"norm_eval": False, "frozen_stages": -1}


def upgrade_model_config(config: Mapping[str, Any]) -> dict:
    """A ``model_config`` in today's form. Checkpoints written by segdense 0.1.0 stored the backbone as a name
    with ``output_stride``, ``memory_efficient`` and ``backbone_kwargs`` beside it, and the head's arguments at
    the top level; those become the backbone and head blocks. Backbone options added later
    (``LATER_BACKBONE_OPTIONS``) take their defaults where the backbone accepts them and the block lacks them."""
    config = dict(config) if not isinstance(config.get("backbone"), str) else _from_0_1_0(config)
    backbone = dict(config["backbone"])
    accepted = BACKBONES.signature(backbone["name"])[0] if backbone.get("name") in BACKBONES.names() else []
    for key, default in LATER_BACKBONE_OPTIONS.items():
        if key in accepted:
            backbone.setdefault(key, default)
    return {**config, "backbone": backbone}


def _from_0_1_0(config: Mapping[str, Any]) -> dict:
    old = dict(config)
    backbone = {"name": old.pop("backbone"), "output_stride": old.pop("output_stride", 16)}
    backbone.update(old.pop("backbone_kwargs", None) or {})
    memory_efficient = old.pop("memory_efficient", False)
    if memory_efficient or backbone["name"].startswith("densenet"):  # only the DenseNet builders take it
        backbone["memory_efficient"] = bool(memory_efficient)
    old.pop("pretrained", None)
    num_classes, aux_loss = old.pop("num_classes", 21), bool(old.pop("aux_loss", False))
    head = {"name": old.pop("head", "deeplabv3"), **old}
    return {"backbone": backbone, "head": head, "num_classes": num_classes, "aux_loss": aux_loss}
