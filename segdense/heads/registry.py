"""Head registry: build any registered decoder head by name from a backbone's ``feature_info``."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn

from ..backbones.features import FeatureSpec
from ..registry import Registry

HEADS = Registry("head")


def register_head(cls_or_name: Callable[..., nn.Module] | str | None = None, *,
                  kwargs_to: Callable[..., nn.Module] | None = None):
    """Register a head class (or builder), as ``@register_head("name")`` or ``@register_head``.
    ``kwargs_to``: the class a builder function forwards its ``**kwargs`` to (config checks list its arguments).

    A head is called as ``Head(feature_info, num_classes, output_stride, **head_kwargs)`` and its
    ``forward`` takes the backbone's ordered dict of features and returns logits at the head's
    own resolution (the model upsamples them to the input size).
    """
    return HEADS.register(cls_or_name, kwargs_to=kwargs_to)


def list_heads() -> list[str]:
    """Names of all registered heads, sorted."""
    return HEADS.names()


def build_head(
    name: str,
    feature_info: Sequence[FeatureSpec],
    num_classes: int,
    output_stride: int,
    **head_kwargs,
) -> nn.Module:
    """Build the head registered as ``name`` for a backbone described by ``feature_info``."""
    head = HEADS.get(name)
    check_num_classes(num_classes)
    if not feature_info:
        raise ValueError(f"head {name!r} needs a backbone with at least one feature; feature_info is empty")
    return head(list(feature_info), num_classes, output_stride, **head_kwargs)


def check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
