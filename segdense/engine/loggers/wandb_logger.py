"""Weights & Biases: a run under ``<run_dir>/wandb``, offline unless an API key is set (``wandb sync`` uploads an
offline run later). wandb is imported only when this logger is built."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .base import LOGGERS, Logger, run_name

EXIT_CODES = {"finished": 0, "failed": 1, "killed": 143}


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """One W&B run per training run, named after the run directory; a resumed run continues the run ``run_id``.
    ``mode`` null: ``WANDB_MODE`` when set, else online with ``WANDB_API_KEY`` set and offline without it. The
    run's status is in its summary (``status``) and its exit code (0 finished, 1 failed, 143 killed)."""

    name, package, extra = "wandb", "wandb", "wandb"

    def __init__(self, run_dir: str | os.PathLike, run_id: str | None = None, project: str = "segdense",
                 entity: str | None = None, mode: str | None = None) -> None:
        import wandb

        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        mode = mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=project, entity=entity, dir=str(run_dir), id=run_id, name=run_name(run_dir),
                              resume="allow" if run_id else None, mode=mode,
                              settings=wandb.Settings(console="off", init_timeout=60))
        self.run_id, self.run_dir = self.run.id, run_dir

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_image(self, key: str, image, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Image(image.permute(1, 2, 0).numpy())}, step=step)

    def log_artifact(self, path: str | os.PathLike) -> None:
        """``path`` among the run's files as ``<run directory name>/<its path in the run directory>``: W&B keeps
        its own ``config.yaml`` at the top of the files."""
        path = Path(path).resolve()
        base = self.run_dir.parent if path.is_relative_to(self.run_dir) else path.parent.parent
        self.run.save(str(path), base_path=str(base), policy="now")

    def close(self, status: str = "finished") -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=EXIT_CODES[status])
