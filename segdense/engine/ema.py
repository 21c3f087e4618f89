"""Weight EMA: an exponential moving average of the model's weights, updated after every optimizer step.

It follows timm's ``ModelEmaV3`` (the tests compare the two on the same model and steps): every floating-point
entry of the state dict, parameters and BatchNorm running statistics alike, moves towards the model's by
``1 - decay``; integer buffers (BatchNorm's ``num_batches_tracked``) are copied. With ``use_warmup`` the decay
grows as ``1 - (1 + step / warmup_gamma) ** -warmup_power``, capped at ``decay``. The first update copies the
weights (timm's step 1 has decay 0). Each process keeps its own copy: under DDP the weights, and so the
averages, are the same everywhere.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from segdense.errors import ConfigError

from .hooks import Hook

Trainer = Any  # segdense.engine.trainer.Trainer, which imports this module


class WeightEMA(Hook):
    """The average of ``decay`` (``None``: no EMA); :meth:`bind` makes the copy of the trained model."""

    def __init__(self, decay: float | None = None, use_warmup: bool = False, warmup_gamma: float = 1.0,
                 warmup_power: float = 2 / 3) -> None:
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1) or null (no EMA), got {decay}")
        if warmup_gamma <= 0 or warmup_power <= 0:
            raise ConfigError(f"ema.warmup_gamma and ema.warmup_power must be positive, got {warmup_gamma} and "
                              f"{warmup_power}")
        self.decay, self.use_warmup = decay, bool(use_warmup)
        self.warmup_gamma, self.warmup_power = float(warmup_gamma), float(warmup_power)
        self.module: nn.Module | None = None

    @property
    def enabled(self) -> bool:
        return self.decay is not None

    def bind(self, model: nn.Module) -> None:
        """Start the average at ``model``'s weights (a copy on the same device, in eval mode)."""
        if self.enabled:
            self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay of update ``step`` (1 for the first), as timm's ``ModelEmaV3.get_decay``."""
        step = max(0, step - 1)
        if step == 0:
            return 0.0
        if self.use_warmup:
            return max(min(1 - (1 + step / self.warmup_gamma) ** -self.warmup_power, self.decay), 0.0)
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        averaged = []
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.is_floating_point():
                averaged.append((ema_value, value))
            else:
                ema_value.copy_(value)
        if averaged:
            ema_values, values = zip(*averaged)
            torch._foreach_lerp_(list(ema_values), list(values), weight=1.0 - self.decay_at(step))

    def on_step(self, trainer: Trainer, logged: dict[str, float] | None, images: int) -> None:
        if self.enabled:
            self.update(trainer.model, trainer.iteration)
