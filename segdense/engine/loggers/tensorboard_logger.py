"""TensorBoard: event files under ``<run_dir>/tensorboard`` (what the training report reads its curves from)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .base import LOGGERS, Logger


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """Scalars and images under ``<run_dir>/tensorboard``; the configuration as a text summary. Artifacts stay
    where they are, in the run directory beside the events."""

    name, package = "tensorboard", "tensorboard"

    def __init__(self, run_dir: str | os.PathLike, run_id: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # only runs that log to TensorBoard import it

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_image(self, key: str, image, step: int) -> None:
        self.writer.add_image(key, image, step)

    def close(self, status: str = "finished") -> None:
        self.writer.close()
