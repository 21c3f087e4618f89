"""Frozen BatchNorm and frozen stages for backbones (mmsegmentation's ``norm_eval`` and ``frozen_stages``).

``norm_eval=True`` keeps every BatchNorm of the backbone in eval mode while the model trains: each normalises
with its running statistics and updates none of them. Use it with small per-GPU batches (a few images, where
batch statistics are noisy) and when fine-tuning from ImageNet weights whose statistics should stay as they are.
``frozen_stages=n`` freezes the stem (``n >= 0``) and the first ``n`` stages: no gradients for their
parameters and their BatchNorms in eval mode. Both survive ``model.train()``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn


def check_freezing(norm_eval: bool, frozen_stages: int, num_stages: int) -> None:
    """One clear error for values the backbone cannot apply."""
    if norm_eval not in (True, False):
        raise ValueError(f"norm_eval must be true or false, got {norm_eval!r}")
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(
            f"frozen_stages must be an int from -1 (nothing frozen) through {num_stages} (every stage; 0 freezes "
            f"only the stem), got {frozen_stages!r}")


class FreezableBackbone(nn.Module):
    """A backbone whose ``train(mode)`` puts its ``norm_eval`` and ``frozen_stages`` state back each time (over its
    ``stages()``: the stem's modules, then each stage's). A family without ``norm_eval`` keeps its BatchNorms as
    ``train`` leaves them."""

    def train(self, mode: bool = True) -> "FreezableBackbone":
        """``nn.Module.train``, then ``norm_eval`` and ``frozen_stages`` applied again."""
        super().train(mode)
        if mode:
            apply_freezing(self, self.stages(), getattr(self, "norm_eval", False), self.frozen_stages)
        return self


def apply_freezing(backbone: nn.Module, stages: Sequence[Sequence[nn.Module]], norm_eval: bool,
                   frozen_stages: int) -> None:
    """Put ``backbone`` in the state its options ask for; call after every ``train(mode)``. ``stages``: the stem's
    modules, then each stage's, in order; the first ``frozen_stages + 1`` of them are frozen."""
    for stage in list(stages)[: frozen_stages + 1]:
        for module in stage:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
    if norm_eval:
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def stage_of_parameter(backbone: nn.Module, stages: Sequence[Sequence[nn.Module]], param_name: str,
                       outside: int | None = None) -> int:
    """The index in ``stages`` (0 = the stem, i + 1 = stage i) of the stage whose modules hold the parameter
    ``param_name`` (a name relative to ``backbone``): what a backbone's ``stage_of`` answers, for stage-wise
    learning-rate decay. A parameter of no stage (a classifier) gets ``outside``, or an error when it is ``None``."""
    param = backbone.get_parameter(param_name)
    for index, stage in enumerate(stages):
        if any(p is param for module in stage for p in module.parameters()):
            return index
    if outside is not None:
        return outside
    raise ValueError(f"parameter {param_name!r} of {type(backbone).__name__} belongs to none of its stages "
                     "(the stem and the stages only; a classifier has no stage)")
