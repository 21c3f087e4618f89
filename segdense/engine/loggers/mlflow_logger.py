"""MLflow: a run in a tracking store, by default a SQLite file in the run directory (``<run_dir>/mlflow.db``, its
artifacts in ``<run_dir>/mlartifacts``), or on a server named by ``tracking_uri``. MLflow is imported only when
this logger is built: plain training does not pay for it."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from .base import LOGGERS, Logger, run_name

# Bounded waits on a server that does not answer (unless the environment sets them): a request gives up after
# 10 s, with two retries 1 s and 2 s apart, instead of MLflow's 120 s and seven retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
BATCH = 100  # MLflow's limit on parameters per log_batch call (metrics: 1000)


def mlflow_key(key: str) -> str:
    """``key`` with the characters MLflow refuses (anything but letters, digits, ``_-./`` and space) as ``_``."""
    return re.sub(r"[^\w\-./ ]", "_", key)


@LOGGERS.register("mlflow")
class MLflowLogger(Logger):
    """One MLflow run per training run, named after the run directory; a resumed run continues the run
    ``run_id``. Parameters already in a resumed run keep their first values (MLflow's parameters cannot
    change; ``resume`` itself differs), new keys are added."""

    name, package, extra = "mlflow", "mlflow", "mlflow"

    def __init__(self, run_dir: str | os.PathLike, run_id: str | None = None, tracking_uri: str | None = None,
                 experiment_name: str = "segdense") -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        self.tracking_uri = tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id, self.logged = run_id, set(self.client.get_run(run_id).data.params)
        else:
            experiment_id = self._experiment(experiment_name)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name(run_dir)).info.run_id
            self.logged = set()

    def _experiment(self, name: str) -> str:
        """The id of experiment ``name``, created when new; a SQLite store keeps its artifacts beside the file
        (MLflow's default would be ``./mlruns`` in whatever directory the run started from)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            location = (Path(self.tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        new = [Param(mlflow_key(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()
               if mlflow_key(k) not in self.logged]
        for start in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[start:start + BATCH])
        self.logged.update(p.key for p in new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 10 * BATCH])

    def log_artifact(self, path: str | os.PathLike) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, status=status.upper())
