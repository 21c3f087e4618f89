"""Checks of the model's options against each other, made before anything is built: a top-level ``output_stride``
that the backbone does not take, and a crop or image size below the smallest input the backbone accepts."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from segdense.backbones.registry import BACKBONES
from segdense.errors import ConfigError

from .schema import TrainConfig

DEFAULT_OUTPUT_STRIDE = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "output_stride")


def check_model_inputs(cfg: Mapping[str, Any], command_line: set[str] = frozenset()) -> None:
    """Raise one :class:`ConfigError` for the problems below (``cfg``'s groups already checked by
    :func:`segdense.config.group_keys.validate_config`). ``command_line``: the keys given on the command line
    (:func:`segdense.config.overrides.command_line_keys`), to tell an explicit ``output_stride=16`` from the
    default; a value other than the default counts as explicit anyway."""
    backbone = dict(cfg["backbone"])
    problems = output_stride_problems(backbone, cfg["output_stride"], "output_stride" in command_line)
    if not problems:
        problems = input_size_problems(backbone, cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def output_stride_problems(backbone: dict, output_stride: int, explicit: bool) -> list[str]:
    name = backbone["name"]
    accepted, open_ended = BACKBONES.signature(name)
    if open_ended or "output_stride" in accepted or not (explicit or output_stride != DEFAULT_OUTPUT_STRIDE):
        return []
    return [f"output_stride={output_stride} does not apply to backbone {name}, which takes no output_stride (it "
            "predicts at full resolution); leave output_stride out, or pick a backbone with one, such as "
            "densenet121 or resnet50"]


def input_size_problems(backbone: dict, cfg: Mapping[str, Any]) -> list[str]:
    """``crop_size`` and the dataset's ``image_size`` (when it has one) against the backbone's smallest input."""
    smallest = minimum_input_size(backbone)
    sizes = {"crop_size": cfg["crop_size"], "dataset.image_size": dict(cfg["dataset"]).get("image_size")}
    problems = []
    for key, size in sizes.items():
        if size is None:
            continue
        values = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
        if min(values) < smallest:
            shown = values[0] if isinstance(size, (int, float)) else values
            problems.append(f"{key}={shown} is too small for backbone {backbone['name']}, whose input must be at "
                            f"least {smallest}x{smallest} pixels; use {key} of at least {smallest}")
    return problems


def minimum_input_size(backbone: dict) -> int:
    """The smallest height/width the backbone of this config block accepts (its ``min_input_size``; 1 when it has
    none), read from a copy built on the meta device: no memory, no weights read."""
    block = {key: value for key, value in backbone.items() if key != "name"}
    if "pretrained" in block:
        block["pretrained"] = None
    try:
        with torch.device("meta"):
            model = BACKBONES.get(backbone["name"])(**block)
    except Exception:  # a value the constructor refuses: building the model reports it, with its block named
        return 1
    return int(getattr(model, "min_input_size", 1))
