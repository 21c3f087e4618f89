"""Backbone registry: build any registered backbone by name."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..registry import Registry, unknown_name_message

__all__ = ["build_backbone", "list_backbones", "register_backbone", "unknown_name_message"]

_BACKBONES = Registry("backbone")


def register_backbone(fn_or_name: Callable[..., nn.Module] | str | None = None):
    """Register a backbone builder, as ``@register_backbone`` or ``@register_backbone("name")``.

    A backbone must expose ``forward_features(x) -> dict[str, Tensor]`` (ordered, shallow to deep),
    ``feature_info`` (a list of :class:`~segdense.backbones.FeatureSpec`) and ``output_stride``;
    every head and the segmentation model work with anything that does.
    """
    return _BACKBONES.register(fn_or_name)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return _BACKBONES.names()


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the builder's keyword arguments."""
    return _BACKBONES.builder(name)(**kwargs)
