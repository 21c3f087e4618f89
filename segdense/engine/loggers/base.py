"""The logger protocol every experiment-tracking backend implements, its registry, and the guard that keeps a
failing backend from stopping training.

A logger gets ``log_params`` (the flattened configuration, once), ``log_metrics`` (scalars with the iteration as
their step), ``log_image`` (an image grid; backends without images ignore it), ``log_artifact`` (a file) and
``close`` with the run's status: ``finished``, ``failed`` or ``killed``. ``run_id`` is what a resumed run passes
back to the constructor to continue the same run (None for backends without runs). Lightning's ``Logger`` has the
same shape.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from segdense.errors import ConfigError
from segdense.registry import Registry

logger = logging.getLogger("segdense.train")

LOGGERS = Registry("logger")
STATUSES = ("finished", "failed", "killed")


class Logger:
    """One experiment-tracking backend; subclasses override the calls they support. ``package`` is the module it
    needs and ``extra`` the segdense extra that installs it (None: installed with segdense)."""

    name = "logger"
    package: str | None = None
    extra: str | None = None
    run_id: str | None = None

    @classmethod
    def check_installed(cls) -> None:
        """One clear line when the backend's package is missing (a config error: the run asked for it)."""
        if cls.package and importlib.util.find_spec(cls.package) is None:
            install = f"pip install 'segdense[{cls.extra}]'" if cls.extra else f"pip install {cls.package}"
            raise ConfigError(f"logger={cls.name} needs the {cls.package} package, which is not installed: {install}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_image(self, key: str, image, step: int) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass


class GuardedLogger(Logger):
    """``backend`` with every call guarded: its first failure (a server down, a full disk) is one warning naming
    the backend and the error, and turns it off, so training goes on and a server that does not answer costs one
    bounded wait rather than one per step. ``close`` is still tried once, to record the run's status."""

    def __init__(self, backend: Logger) -> None:
        self.backend, self.failed = backend, False
        self.name, self.run_id = backend.name, backend.run_id

    def _call(self, method: str, *args, always: bool = False) -> None:
        if self.failed and not always:
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as exc:  # any failure of a tracking backend: never the training's problem
            if not self.failed:
                logger.warning("logger %s failed in %s (%s: %s); training goes on without it", self.name, method,
                               type(exc).__name__, exc)
            self.failed = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def log_image(self, key: str, image, step: int) -> None:
        self._call("log_image", key, image, step)

    def log_artifact(self, path: str | os.PathLike) -> None:
        self._call("log_artifact", path)

    def close(self, status: str = "finished") -> None:
        self._call("close", status, always=True)


def run_name(run_dir: Path) -> str:
    """A run's display name: its directory's name (Hydra's ``<time>_<backbone>_os<stride>``)."""
    return Path(run_dir).resolve().name
