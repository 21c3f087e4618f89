"""W&B without an API key: an offline run under <run_dir>/wandb whose records hold the parameters, the metrics
with their steps and the status; the artifacts among its files; resuming continues the same run id."""
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

from segdense.config.train_job import train

from train_utils import TINY, compose_config


def wandb_records(path: Path):
    """The records of a ``.wandb`` file: a 7-byte ``:W&B`` header, then LevelDB's log format (32 KiB blocks of
    chunks with a 7-byte header: checksum, length, type; 1 full, 2 first, 3 middle, 4 last)."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if block - pos % block < 7 or (kind == 0 and length == 0):  # the rest of the block is padding
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # the service is still writing this chunk
            return
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def offline_run(run_dir: Path, run_id: str, n: int, timeout: float = 30):
    """(folder, config, history {step: {key: value}}, summary, exit code) of the n-th offline run of ``run_id``,
    once its last record, the exit, is on disk (W&B's service process writes it a moment after ``finish``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = read_offline_run(sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))[n], run_id)
        except DecodeError:  # read while W&B's service was writing a record: read again
            if time.monotonic() > deadline:
                raise
            run = (None,)
        if run[-1] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def read_offline_run(folder: Path, run_id: str):
    config, history, summary, exit_code = {}, {}, {}, None
    for record in wandb_records(folder / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.setdefault(record.history.step.num, {}).update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return folder, config, history, summary, exit_code


def test_an_offline_run_without_an_api_key_holds_params_metrics_status_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    options = TINY + ["logger=[wandb]", "report=true", "checkpoint_interval=2"]
    train(compose_config(options), run_dir=run_dir)
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    folder, config, history, summary, exit_code = offline_run(run_dir, run_id, 0)
    assert config["backbone.growth_rate"] == 8 and config["crop_size"] == [64, 64] and config["git_commit"]
    assert sorted(history) == [1, 2, 3, 4]
    np.testing.assert_allclose([history[s]["train/loss"] for s in (1, 2, 3, 4)],
                               np.fromfile(run_dir / "loss_per_iteration.f32", dtype="<f4"), rtol=1e-6)
    validations = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [history[v["iteration"]]["val/mIoU"] for v in validations] == pytest.approx([v["mIoU"] for v in validations])
    assert "val_IoU/background" in history[4]
    assert summary["status"] == "finished" and exit_code == 0
    files = folder / "files" / "run"
    assert (files / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    assert (files / "report.html").is_file() and (files / "checkpoints" / "best.pt").is_file()

    train(compose_config(options + ["iterations=6", "resume=auto"]), run_dir=run_dir)
    assert json.loads((run_dir / "tracking.json").read_text())["wandb"] == run_id
    _, _, history, summary, exit_code = offline_run(run_dir, run_id, 1)  # the same run id, continued
    assert sorted(history) == [5, 6] and summary["status"] == "finished" and exit_code == 0
