"""Training and validation engine (plain arguments; no configuration objects)."""
from .checkpoint import find_last_checkpoint, save_checkpoint
from .hooks import Hook
from .optimizers import build_optimizer, build_scheduler, lr_factor
from .preemption import Preempted, StopSignals
from .trainer import Trainer, TrainSettings

__all__ = [
    "Hook",
    "Preempted",
    "StopSignals",
    "TrainSettings",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "find_last_checkpoint",
    "lr_factor",
    "save_checkpoint",
]
