"""What an importer returns: the weights in segdense's names and what rebuilds their model."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Imported:
    """One converted file. A whole model has ``model_config`` (:func:`segdense.build_model`'s arguments),
    ``dataset`` (name, class names, palette) and ``config`` (eval pipeline, slide window); a backbone has
    ``backbone`` (its config block) instead. ``part``: the prefix of the keys the file holds where it is only a part of
that backbone (an encoder), else empty. ``notes`` say what was assumed, kept or dropped."""

    layout: str
    weights: dict[str, torch.Tensor]
    model_config: dict | None = None
    backbone: dict | None = None
    dataset: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    part: str = ""
