"""Early stopping: end the run when a validation metric has stopped improving.

Every process takes the same decision at the same validation: the metrics are reduced over all processes, and
under torch.distributed rank 0's decision is broadcast besides, so no process trains on alone. The count of
validations without improvement is part of the checkpoint: a resumed run continues it.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from segdense.errors import ConfigError

from .distributed import world_size
from .hooks import Hook

# What validation reports as numbers (Trainer.validate): early_stop.monitor names one of them.
VALIDATION_METRICS = ("mIoU", "mAcc", "aAcc", "loss")

Trainer = Any  # segdense.engine.trainer.Trainer, which imports this module


class EarlyStopping(Hook):
    """Stop after ``patience`` validations in a row in which ``monitor`` did not improve on its best by more
    than ``min_delta``. ``mode``: ``max``, ``min``, or ``auto`` (min for ``loss``, max for the others).
    ``monitor=None``: never stop."""

    def __init__(self, monitor: str | None = None, mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0) -> None:
        problems = []
        if monitor is not None and monitor not in VALIDATION_METRICS:
            problems.append(f"early_stop.monitor={monitor!r} is not a metric validation reports; "
                            f"choose one of {', '.join(VALIDATION_METRICS)} (or null: no early stopping)")
        if mode not in ("auto", "max", "min"):
            problems.append(f"early_stop.mode must be auto, max or min; got {mode!r}")
        if patience < 1:
            problems.append(f"early_stop.patience must be at least 1 validation, got {patience}")
        if min_delta < 0:
            problems.append(f"early_stop.min_delta must be >= 0, got {min_delta}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = ("min" if monitor == "loss" else "max") if mode == "auto" else mode
        self.best: float | None = None
        self.best_iteration = 0
        self.bad_validations = 0

    @property
    def exhausted(self) -> bool:
        """Whether the patience is used up (also right after a resume from a run that stopped early)."""
        return self.monitor is not None and self.bad_validations >= self.patience

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def on_validation(self, trainer: Trainer, result: dict) -> None:
        if self.monitor is None:
            return
        if self.monitor not in result:
            reported = [key for key, value in result.items() if isinstance(value, (int, float))]
            raise ConfigError(f"early_stop.monitor={self.monitor!r}: validation reports {', '.join(reported)}")
        value = float(result[self.monitor])
        if self.improved(value):
            self.best, self.best_iteration, self.bad_validations = value, trainer.iteration, 0
        else:
            self.bad_validations += 1
        # every process takes part in the decision; at the last iteration the run ends normally all the same
        if self._agreed(self.exhausted, trainer.device) and trainer.iteration < trainer.settings.iterations:
            trainer.stop_reason = self.reason()

    @staticmethod
    def _agreed(stop: bool, device: torch.device) -> bool:
        """Rank 0's decision, on every process."""
        if world_size() == 1:
            return stop
        flag = torch.tensor([int(stop)], device=device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def reason(self) -> str:
        return (f"stopped early: validation {self.monitor} did not improve ({self.mode}, by more than "
                f"{self.min_delta:g}) in {self.bad_validations} validations; best {self.best:.4g} at iteration "
                f"{self.best_iteration}")

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "best": self.best, "best_iteration": self.best_iteration,
                "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict) -> None:
        """The count of a checkpoint that watched the same metric (another metric starts the count afresh)."""
        if state and state.get("monitor") == self.monitor:
            self.best, self.best_iteration = state["best"], int(state["best_iteration"])
            self.bad_validations = int(state["bad_validations"])
