"""MLflow for real: a run in the default SQLite store and one on an ``mlflow server`` on 127.0.0.1, read back with
MlflowClient (parameters, metrics with their steps, artifacts, status); resuming continues the same run; a server
that cannot be reached is a warning and training goes on."""
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from segdense.config.train_job import train

from train_utils import TINY, compose_config, free_port

SERVER_START_TIMEOUT = 180  # seconds; the server imports MLflow and creates its SQLite schema first


def read_back(uri: str):
    """(client, the experiment's only run)."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("segdense")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def steps_and_values(client, run_id, key):
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in history], [m.value for m in history]


def check_run(client, run, run_dir: Path, iterations: int):
    params = run.data.params
    assert params["backbone.growth_rate"] == "8" and params["crop_size"] == "[64, 64]" and params["lr"] == "0.02"
    assert params["git_commit"]
    steps, losses = steps_and_values(client, run.info.run_id, "train/loss")
    assert steps == list(range(1, iterations + 1))
    per_iteration = np.fromfile(run_dir / "loss_per_iteration.f32", dtype="<f4")
    np.testing.assert_allclose(losses, per_iteration, rtol=1e-6)
    history = __import__("json").loads((run_dir / "metrics.json").read_text())["history"]
    steps, miou = steps_and_values(client, run.info.run_id, "val/mIoU")
    assert steps == [h["iteration"] for h in history] and miou == pytest.approx([h["mIoU"] for h in history])
    assert "val_IoU/background" in run.data.metrics and "val_Acc/background" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"best.pt", "config.yaml", "report.html"}
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(run_dir.parent / "download"))
    assert Path(local).read_text() == (run_dir / "config.yaml").read_text()
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name


def test_a_run_in_the_default_sqlite_store_reads_back_and_resuming_continues_it(tmp_path):
    run_dir = tmp_path / "run"
    first = TINY + ["logger=[mlflow]", "report=true", "checkpoint_interval=2"]
    train(compose_config(first), run_dir=run_dir)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client, run = read_back(uri)
    check_run(client, run, run_dir, iterations=4)
    assert (run_dir / "mlartifacts").is_dir()  # artifacts beside the store, not ./mlruns in the working directory

    train(compose_config(first + ["iterations=6", "resume=auto"]), run_dir=run_dir)
    client, resumed = read_back(uri)  # still one run
    assert resumed.info.run_id == run.info.run_id
    check_run(client, resumed, run_dir, iterations=6)
    assert resumed.data.params["resume"] == "None"  # MLflow's parameters keep their first value


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite store and served artifacts; its URI once
    ``/health`` answers (at most SERVER_START_TIMEOUT seconds), stopped at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server_artifacts")]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while not healthy(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_a_run_on_an_mlflow_server_reads_back(mlflow_server, tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(TINY + ["logger=[mlflow]", "report=true", f"mlflow.tracking_uri={mlflow_server}"]),
          run_dir=run_dir)
    assert not (run_dir / "mlflow.db").exists()
    client, run = read_back(mlflow_server)
    check_run(client, run, run_dir, iterations=4)


def test_an_unreachable_tracking_server_warns_and_training_goes_on(tmp_path, caplog):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="segdense.train"):
        result = train(compose_config(TINY + ["logger=[mlflow]", f"mlflow.tracking_uri={uri}"]),
                       run_dir=tmp_path / "run")
    assert time.monotonic() - start < 120
    warnings = [r.getMessage() for r in caplog.records if "logger mlflow" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("logger mlflow could not start (")
    assert "training goes on without it" in warnings[0]
    assert result["mIoU"] >= 0 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
