"""The training loss at every iteration, in ``<run_dir>/loss_per_iteration.f32``: one little-endian float32 per
iteration, record ``i`` for iteration ``i + 1`` (NaN for a skipped fp16 step, or an iteration run in another run
directory before a resume). Four bytes a step, appended by the main process, flushed whenever a checkpoint may be
written; a resumed run cuts the file back to its checkpoint's iteration, so no iteration appears twice."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .hooks import Hook

Trainer = Any  # segdense.engine.trainer.Trainer (not imported: trainer.py imports this module)
LOSS_LOG = "loss_per_iteration.f32"
_RECORD = np.dtype("<f4")


def read_loss_log(run_dir: str | os.PathLike) -> np.ndarray:
    """The loss at iterations 1, 2, ... (float32, NaN where none was recorded); empty when the run has no log."""
    path = Path(run_dir) / LOSS_LOG
    if not path.is_file():
        return np.zeros(0, _RECORD)
    data = path.read_bytes()
    return np.frombuffer(data[: len(data) - len(data) % _RECORD.itemsize], _RECORD).copy()


def open_loss_log(run_dir: str | os.PathLike, iteration: int) -> BinaryIO:
    """The log opened for appending the loss of iteration ``iteration + 1``: records beyond ``iteration`` (written
    after the checkpoint a run resumes from) are cut off, missing ones before it are NaN."""
    path = Path(run_dir) / LOSS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "r+b" if path.is_file() else "w+b")
    size = iteration * _RECORD.itemsize
    log.seek(0, os.SEEK_END)
    have = log.tell() - log.tell() % _RECORD.itemsize
    log.truncate(min(have, size))
    log.seek(min(have, size))
    if have < size:
        log.write(np.full((size - have) // _RECORD.itemsize, np.nan, _RECORD).tobytes())
    return log


class LossLogHook(Hook):
    """Appends each step's loss to :data:`LOSS_LOG` (main process only); flushed with every checkpoint."""

    def __init__(self) -> None:
        self.log: BinaryIO | None = None

    def on_step(self, trainer: Trainer, logged: dict[str, float] | None, images: int) -> None:
        if not trainer.is_main:
            return
        if self.log is None:  # opened at the first step, after any resume has set the iteration
            self.log = open_loss_log(trainer.run_dir, trainer.iteration - 1)
        loss = math.nan if logged is None else logged["loss"]
        self.log.write(np.asarray([loss], _RECORD).tobytes())

    def on_validation(self, trainer: Trainer, result: dict) -> None:
        self._flush()

    def after_iteration(self, trainer: Trainer) -> None:
        if trainer.due(trainer.settings.checkpoint_interval or trainer.settings.val_interval):
            self._flush()

    def on_end(self, trainer: Trainer) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def _flush(self) -> None:
        if self.log is not None:
            self.log.flush()
