"""Backbone registry: build any registered backbone by name."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..registry import Registry

__all__ = ["BACKBONES", "build_backbone", "list_backbones", "register_backbone"]

BACKBONES = Registry("backbone")


def register_backbone(fn_or_name: Callable[..., nn.Module] | str | None = None, *,
                      kwargs_to: Callable | None = None):
    """Register a backbone builder, as ``@register_backbone`` or ``@register_backbone("name")``.

    A backbone must expose ``forward_features(x) -> dict[str, Tensor]`` (ordered, shallow to deep),
    ``feature_info`` (a list of :class:`~segdense.backbones.FeatureSpec`) and ``output_stride``;
    every head and the segmentation model work with anything that does. ``kwargs_to``: the class a
    builder forwards its ``**kwargs`` to, so config validation knows those keys.
    """
    return BACKBONES.register(fn_or_name, kwargs_to=kwargs_to)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return BACKBONES.names()


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the builder's keyword arguments."""
    return BACKBONES.get(name)(**kwargs)
