"""``build_model``: any registered backbone + any registered head, by name, with plain arguments."""
from __future__ import annotations

import json

from ..backbones.registry import build_backbone
from ..heads.registry import build_head, check_num_classes
from .segmentation import SegmentationModel


def _jsonable(value, what: str):
    """Tuples become lists; anything JSON cannot hold is an error (model_config must round-trip)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{what}={value!r} is not a plain JSON value (str, number, bool, None, list, dict); "
            "build_model takes plain arguments so that model.model_config can rebuild the model"
        ) from None
    return value


def build_model(
    backbone: str = "densenet121",
    head: str = "deeplabv3",
    num_classes: int = 21,
    output_stride: int = 16,
    pretrained: str | None = None,
    aux_loss: bool = False,
    memory_efficient: bool = False,
    backbone_kwargs: dict | None = None,
    **head_kwargs,
) -> SegmentationModel:
    """Build a :class:`SegmentationModel` from registered names.

    Args:
        backbone: a registered backbone (``segdense.backbones.list_backbones()``).
        head: a registered head (``segdense.heads.list_heads()``).
        num_classes: classes of the logits (>= 1).
        output_stride: the backbone's output stride (8, 16 or 32 for the ImageNet DenseNets).
        pretrained: backbone weights: ``"imagenet"`` or a checkpoint path (None: random init).
        aux_loss: add the FCN auxiliary head on the stride-16 feature (training output becomes
            ``{"out", "aux"}``).
        memory_efficient: recompute DenseNet bottlenecks in backward (less memory, more time).
        backbone_kwargs: extra arguments for the backbone builder (e.g. ``num_units_per_block``
            and ``growth_rate`` for ``densenet_custom``, ``initial_output_stride``, ``in_channels``).
        **head_kwargs: the head's own arguments (e.g. ``atrous_rates``, ``channels``).

    The model's ``model_config`` holds the JSON-serialisable arguments that rebuild the same
    architecture: ``build_model(**model.model_config)`` (with ``pretrained`` None).
    """
    check_num_classes(num_classes)
    backbone_kwargs = dict(backbone_kwargs or {})
    config = {
        "backbone": backbone,
        "head": head,
        "num_classes": num_classes,
        "output_stride": output_stride,
        "pretrained": None,
        "aux_loss": bool(aux_loss),
        "memory_efficient": bool(memory_efficient),
        "backbone_kwargs": _jsonable(backbone_kwargs, "backbone_kwargs"),
    }
    for key, value in head_kwargs.items():
        config[key] = _jsonable(value, key)

    # Only pass what a user's own backbone builder might not accept when it is actually used.
    extra = dict(backbone_kwargs)
    if memory_efficient:
        extra["memory_efficient"] = True
    if pretrained is not None:
        extra["pretrained"] = pretrained
    net = build_backbone(backbone, output_stride=output_stride, **extra)
    feature_info = getattr(net, "feature_info", None)
    if not feature_info:
        raise TypeError(
            f"backbone {backbone!r} built a {type(net).__name__} without a non-empty feature_info; "
            "a backbone needs feature_info, forward_features(x) and output_stride"
        )
    stride = getattr(net, "output_stride", output_stride)
    main = build_head(head, feature_info, num_classes, stride, **head_kwargs)
    aux = build_head("aux", feature_info, num_classes, stride) if aux_loss else None
    model = SegmentationModel(net, main, aux)
    model.model_config = config
    return model
