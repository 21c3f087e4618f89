"""Training and validation engine (plain arguments; no configuration objects)."""
from .checkpoint import find_last_checkpoint, load_checkpoint, save_checkpoint
from .evaluate import evaluate
from .optimizers import build_optimizer, build_scheduler, lr_factor
from .trainer import Trainer, resolve_amp, resolve_device

__all__ = [
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "find_last_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "resolve_amp",
    "resolve_device",
    "save_checkpoint",
]
