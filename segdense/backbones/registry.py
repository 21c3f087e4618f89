"""Backbone registry: build any registered backbone by name."""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn_or_name: Callable[..., nn.Module] | str | None = None):
    """Register a backbone builder, as ``@register_backbone`` or ``@register_backbone("name")``.

    A backbone must expose ``forward_features(x) -> dict[str, Tensor]`` (ordered, shallow to deep),
    ``feature_info`` (a list of :class:`~segdense.backbones.FeatureSpec`) and ``output_stride``;
    every head and the segmentation model work with anything that does.
    """

    def decorator(fn: Callable[..., nn.Module], name: str | None = None) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _BACKBONES and _BACKBONES[key] is not fn:
            raise ValueError(f"a backbone named {key!r} is already registered")
        _BACKBONES[key] = fn
        return fn

    if callable(fn_or_name):
        return decorator(fn_or_name)
    return lambda fn: decorator(fn, fn_or_name)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """Error text for an unknown registry name: the valid names and the closest match."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(valid)}."


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the builder's keyword arguments."""
    if name not in _BACKBONES:
        raise ValueError(unknown_name_message("backbone", name, list_backbones()))
    return _BACKBONES[name](**kwargs)
