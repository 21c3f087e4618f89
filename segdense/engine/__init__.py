"""Training and validation engine (plain arguments; no configuration objects)."""
from .checkpoint import find_last_checkpoint, save_checkpoint
from .hooks import Hook
from .optimizers import build_optimizer, build_scheduler, lr_factor
from .trainer import Trainer, TrainSettings

__all__ = [
    "Hook",
    "TrainSettings",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "find_last_checkpoint",
    "lr_factor",
    "save_checkpoint",
]
