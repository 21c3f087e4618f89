"""Description of the feature maps a backbone hands to a decoder."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map of a backbone: its name, channel count and effective stride.

    ``stride`` is the effective one, after dilation: at output stride 8 the last two
    blocks of a DenseNet both report 8.
    """

    name: str
    channels: int
    stride: int


def feature_at_stride(feature_info: list[FeatureSpec], stride: int) -> FeatureSpec | None:
    """Return the deepest feature whose effective stride equals ``stride`` (None if absent)."""
    found = None
    for spec in feature_info:
        if spec.stride == stride:
            found = spec
    return found
