"""Experiment loggers: one small protocol (:class:`Logger`: ``log_params``, ``log_metrics``, ``log_artifact``,
``close``) with one implementation per backend, registered by name in :data:`LOGGERS` (``logger=[...]``). The
trainer holds a list of them and never names a backend; each backend imports its package only when built."""
from . import mlflow_logger, tensorboard_logger, wandb_logger  # noqa: F401  (they register themselves)
from .base import LOGGERS, STATUSES, GuardedLogger, Logger
from .mlflow_logger import MLflowLogger
from .run import check_loggers, flatten_config, git_commit, open_loggers, tracked_run
from .tensorboard_logger import TensorBoardLogger
from .wandb_logger import WandbLogger

__all__ = ["LOGGERS", "STATUSES", "GuardedLogger", "Logger", "MLflowLogger", "TensorBoardLogger", "WandbLogger",
           "check_loggers", "flatten_config", "git_commit", "open_loggers", "tracked_run"]
