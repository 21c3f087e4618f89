"""Experiment loggers: one small protocol (:class:`Logger`: ``log_params``, ``log_metrics``, ``log_artifact``,
``close``) with one implementation per backend, registered by name in :data:`LOGGERS` (``logger=[...]``). The
trainer holds a list of them and never names a backend; each backend imports its package only when built."""
from . import tensorboard_logger  # noqa: F401  (it registers itself)
from .base import LOGGERS, STATUSES, GuardedLogger, Logger
from .run import check_loggers, flatten_config, git_commit, open_loggers, tracked_run
from .tensorboard_logger import TensorBoardLogger

__all__ = ["LOGGERS", "STATUSES", "GuardedLogger", "Logger", "TensorBoardLogger",
           "check_loggers", "flatten_config", "git_commit", "open_loggers", "tracked_run"]
