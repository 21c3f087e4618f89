"""What hangs off the training loop: progress and ETA, the loggers, ``metrics.json`` and checkpoints.

A hook has any of ``on_step(trainer, logged, images)`` (after each step; ``logged`` is None for a skipped fp16
step), ``on_validation(trainer, result)``, ``after_iteration(trainer)`` and ``on_end(trainer)``. A plain function
``fn(trainer, iteration)`` is called after every iteration. Only the main process writes files.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .visualize import comparison_grid

# segdense.engine.trainer.Trainer; not imported, since trainer.py imports this module (no cycle, not even for types)
Trainer = Any
logger = logging.getLogger("segdense.train")


class Hook:
    """A hook that does nothing; subclasses override the points they need."""

    def on_step(self, trainer: Trainer, logged: dict[str, float] | None, images: int) -> None:
        pass

    def on_validation(self, trainer: Trainer, result: dict) -> None:
        pass

    def after_iteration(self, trainer: Trainer) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass


class FunctionHook(Hook):
    """``fn(trainer, iteration)`` after every iteration."""

    def __init__(self, fn: Callable[[Trainer, int], None]) -> None:
        self.fn = fn

    def after_iteration(self, trainer: Trainer) -> None:
        self.fn(trainer, trainer.iteration)


def as_hook(hook: Hook | Callable[[Trainer, int], None]) -> Hook:
    return hook if isinstance(hook, Hook) else FunctionHook(hook)


class Throughput:
    """Images per second since the last ``reset``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.steps = time.perf_counter(), 0, 0

    def add(self, images: int) -> None:
        self.images += images
        self.steps += 1

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    @property
    def speed(self) -> float:
        return self.images / self.elapsed


def logging_due(trainer: Trainer, logged: dict | None) -> bool:
    return logged is not None and (trainer.iteration % trainer.settings.log_interval == 0
                                   or trainer.iteration == trainer.settings.iterations)


class ProgressHook(Hook):
    """A tqdm bar on a terminal; otherwise a log line with loss, lr, speed and ETA every ``log_interval``."""

    def __init__(self, trainer: Trainer) -> None:
        self.interactive = trainer.is_main and sys.stderr.isatty()
        s = trainer.settings
        self.bar = tqdm(total=s.iterations, initial=trainer.iteration, disable=not self.interactive,
                        dynamic_ncols=True)
        self.window = Throughput()

    def on_step(self, trainer: Trainer, logged: dict[str, float] | None, images: int) -> None:
        self.window.add(images)
        self.bar.update(1)
        if not logging_due(trainer, logged):
            return
        lr = trainer.optimizer.param_groups[0]["lr"]
        self.bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{lr:.2e}")
        if not self.interactive and trainer.is_main:
            eta = (trainer.settings.iterations - trainer.iteration) * self.window.elapsed / self.window.steps
            logger.info("it %d/%d  loss %.4f  lr %.2e  %.1f img/s  eta %s", trainer.iteration,
                        trainer.settings.iterations, logged["loss"], lr, self.window.speed, format_seconds(eta))
        self.window.reset()

    def on_end(self, trainer: Trainer) -> None:
        self.bar.close()


class LoggerHook(Hook):
    """To every logger of the list (:mod:`segdense.engine.loggers`): training losses, lr, speed (and CUDA memory)
    every ``log_interval``; every validation metric, per class as well (``val_IoU/<class>``, ``val_Acc/<class>``;
    a class absent from the validation set has none), and an image / ground truth / prediction grid."""

    def __init__(self, loggers: Sequence[Any]) -> None:
        self.loggers = list(loggers)
        self.window = Throughput()

    def on_step(self, trainer: Trainer, logged: dict[str, float] | None, images: int) -> None:
        self.window.add(images)
        if not logging_due(trainer, logged):
            return
        metrics = {f"train/{key}": value for key, value in logged.items()}
        metrics["train/lr"] = trainer.optimizer.param_groups[0]["lr"]
        metrics["train/images_per_second"] = self.window.speed
        if trainer.device.type == "cuda":
            metrics["train/max_memory_allocated_MiB"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
        for lg in self.loggers:
            lg.log_metrics(metrics, trainer.iteration)
        self.window.reset()

    def on_validation(self, trainer: Trainer, result: dict) -> None:
        metrics = validation_metrics(result)
        grid = None
        if trainer.val_preview is not None and trainer.palette:
            scaling = getattr(getattr(trainer.val_loader, "dataset", None), "input_scaling", None)
            grid = comparison_grid(*trainer.val_preview, trainer.palette, scaling=scaling)
        for lg in self.loggers:
            lg.log_metrics(metrics, trainer.iteration)
            if grid is not None:
                lg.log_image("val/image_gt_pred", grid, trainer.iteration)


def validation_metrics(result: dict) -> dict[str, float]:
    """Every number of a validation result as ``val/<name>``, and each class's as ``val_<metric>/<class>``
    (NaN, a class that never occurs, left out)."""
    metrics = {f"val/{key}": float(value) for key, value in result.items() if isinstance(value, (int, float))}
    for c in result.get("per_class", []):
        metrics.update({f"val_{key}/{c['name']}": float(value) for key, value in c.items()
                        if key != "name" and isinstance(value, (int, float))})
    return {key: value for key, value in metrics.items() if not math.isnan(value)}


class CheckpointHook(Hook):
    """``checkpoints/best.pt`` whenever validation reaches a new best mIoU, ``checkpoints/last.pt`` every
    ``checkpoint_interval`` and at the end (written atomically: a crash keeps the previous file)."""

    def on_validation(self, trainer: Trainer, result: dict) -> None:
        if trainer.best_iteration == trainer.iteration:
            self.save(trainer, ckpt.BEST)

    def after_iteration(self, trainer: Trainer) -> None:
        if trainer.due(trainer.settings.checkpoint_interval or trainer.settings.val_interval):
            self.save(trainer, ckpt.LAST)

    @staticmethod
    def save(trainer: Trainer, name: str) -> None:
        if trainer.is_main:
            ckpt.save_checkpoint(trainer.state_dict(), trainer.run_dir / ckpt.CHECKPOINT_DIR / name)


class MetricsFileHook(Hook):
    """``metrics.json`` after every validation: the iteration, the best mIoU and where, the last metrics (without
    the confusion matrix) and the validation history."""

    def on_validation(self, trainer: Trainer, result: dict) -> None:
        if not trainer.is_main:
            return
        summary = {
            "iteration": trainer.iteration,
            "best_mIoU": trainer.best_miou,
            "best_iteration": trainer.best_iteration,
            "stop_reason": trainer.stop_reason,  # null unless the run stopped early
            "last": {k: v for k, v in result.items() if k != "confusion"},
            "history": trainer.history,
        }
        path = trainer.run_dir / "metrics.json"
        tmp = path.with_name(".metrics.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
