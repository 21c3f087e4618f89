"""The logger protocol: any subset of backends by name, metrics at log_interval and every validation, the
configuration as parameters, artifacts and the run's status at the end; a failing backend warns once."""
import json
import logging
import os
import signal

import pytest

from segdense.config.train_job import train
from segdense.engine import Preempted
from segdense.engine.loggers import LOGGERS, Logger, flatten_config
from segdense.errors import ConfigError

from train_utils import TINY, compose_config


class Recorder(Logger):
    """Remembers every call (class-level, so the test sees the instance the run built)."""

    name = "recorder"
    calls: list = []

    def __init__(self, run_dir, run_id=None):
        self.run_dir = run_dir

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", dict(metrics), step))

    def log_artifact(self, path):
        self.calls.append(("artifact", os.path.relpath(path, self.run_dir)))

    def close(self, status="finished"):
        self.calls.append(("close", status))


class Broken(Logger):
    name = "broken"

    def __init__(self, run_dir, run_id=None):
        pass

    def log_metrics(self, metrics, step):
        raise OSError(28, "No space left on device")


class NotInstalled(Logger):
    name, package, extra = "missing", "segdense_no_such_package", "missing"

    def __init__(self, run_dir, run_id=None):
        pass


@pytest.fixture
def registered():
    Recorder.calls = []
    for cls in (Recorder, Broken, NotInstalled):
        LOGGERS.register(cls, cls.name)
    yield Recorder.calls
    for cls in (Recorder, Broken, NotInstalled):
        LOGGERS.unregister(cls.name)


def test_a_run_logs_params_metrics_artifacts_and_finished(registered, tmp_path):
    train(compose_config(TINY + ["logger=[recorder]", "report=true"]), run_dir=tmp_path)
    params = [c[1] for c in registered if c[0] == "params"]
    assert len(params) == 1 and params[0]["backbone.growth_rate"] == 8 and params[0]["crop_size"] == [64, 64]
    assert params[0]["git_commit"]  # a commit, or "unknown" outside a checkout
    steps = [c[2] for c in registered if c[0] == "metrics" and "train/loss" in c[1]]
    assert steps == [1, 2, 3, 4]  # log_interval=1
    validations = [c for c in registered if c[0] == "metrics" and "val/mIoU" in c[1]]
    assert [c[2] for c in validations] == [2, 4]
    last = json.loads((tmp_path / "metrics.json").read_text())["last"]
    assert validations[-1][1]["val/mIoU"] == pytest.approx(last["mIoU"])
    iou = {c["name"]: c["IoU"] for c in last["per_class"]}
    logged_iou = {k.split("/", 1)[1]: v for k, v in validations[-1][1].items() if k.startswith("val_IoU/")}
    assert logged_iou == pytest.approx({k: v for k, v in iou.items() if v == v})  # NaN (absent class) left out
    assert any(k.startswith("val_Acc/") for k in validations[-1][1])
    artifacts = {c[1] for c in registered if c[0] == "artifact"}
    assert artifacts == {os.path.join("checkpoints", "best.pt"), "report.html", "config.yaml"}
    assert registered[-1] == ("close", "finished")


def test_a_stop_signal_closes_the_run_as_killed_and_an_error_as_failed(registered, tmp_path):
    def sigterm_at_2(trainer, iteration):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        train(compose_config(TINY + ["logger=[recorder]"]), run_dir=tmp_path / "a", hooks=[sigterm_at_2])
    assert registered[-1] == ("close", "killed")

    def crash(trainer, iteration):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        train(compose_config(TINY + ["logger=[recorder]"]), run_dir=tmp_path / "b", hooks=[crash])
    assert registered[-1] == ("close", "failed")


def test_a_failing_logger_warns_once_and_training_goes_on(registered, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="segdense.train"):
        result = train(compose_config(TINY + ["logger=[broken,recorder]"]), run_dir=tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "logger broken" in r.getMessage()]
    assert warnings == ["logger broken failed in log_metrics (OSError: [Errno 28] No space left on device); "
                        "training goes on without it"]
    assert result["mIoU"] == pytest.approx(json.loads((tmp_path / "metrics.json").read_text())["last"]["mIoU"])
    assert len([c for c in registered if c[0] == "metrics" and "train/loss" in c[1]]) == 4  # the others still log


def test_an_unknown_logger_is_one_line_listing_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        train(compose_config(TINY + ["logger=[tensorboard,mlfow]"]), run_dir=tmp_path / "run")
    line = "unknown logger 'mlfow'; valid loggers: mlflow, tensorboard, wandb (e.g. logger=[tensorboard,mlflow])"
    assert str(error.value).splitlines()[-1] == f"  - {line}"
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_wrong_backend_option_names_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"mlflow.tracking_url is not an option of logger mlflow; valid keys: "
                                          r"experiment_name, tracking_uri"):
        train(compose_config(TINY + ["+mlflow.tracking_url=http://x"]), run_dir=tmp_path)


def test_a_backend_asked_for_but_not_installed_is_one_clear_line(registered, tmp_path):
    with pytest.raises(ConfigError, match=r"^logger=missing needs the segdense_no_such_package package, which is "
                                          r"not installed: pip install 'segdense\[missing\]'$"):
        train(compose_config(TINY + ["logger=[missing]"]), run_dir=tmp_path)


def test_plain_training_does_not_import_the_tracking_packages():
    import subprocess
    import sys

    code = "import sys, segdense.config.train_job; print('mlflow' in sys.modules, 'wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_flatten_config_joins_nested_keys_and_keeps_lists_whole():
    assert flatten_config({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {"a.b": 1, "a.c.d": None, "e": [1, 2]}


def test_tensorboard_holds_the_validation_loss_of_every_validation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_config(TINY + ["logger=[tensorboard]"]), run_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val/loss")]
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [step for step, _ in logged] == [h["iteration"] for h in history] == [2, 4]
    assert [value for _, value in logged] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert all(value > 0 for _, value in logged)
