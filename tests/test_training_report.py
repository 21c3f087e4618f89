"""The training report: written at the end of training and by tools/report.py, from metrics.json and TensorBoard."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from segdense.config.train_job import train

from html_check import check_page
from train_utils import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]
RUN = [o for o in TINY if not o.startswith(("logger", "report"))] + [
    "logger=[tensorboard]", "report=true", "iterations=6", "val_interval=2", "checkpoint_interval=6", "lr=0.05"]


def test_training_writes_a_report_of_its_curves_classes_and_predictions(tmp_path):
    train(compose_config(RUN), run_dir=tmp_path)
    page = check_page(tmp_path / "report.html")
    assert set(page.images) == {f"report/{n}.png" for n in ("loss", "lr", "val", "per_class_iou", "val_predictions")}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert page.tables["validation"][1:] == [[str(h["iteration"]), f"{100 * h['mIoU']:.2f}", f"{100 * h['mAcc']:.2f}",
                                              f"{100 * h['aAcc']:.2f}"] for h in metrics["history"]]
    assert [row[0] for row in page.tables["validation"][1:]] == ["2", "4", "6"]
    best = next(h for h in metrics["history"] if h["iteration"] == metrics["best_iteration"])
    names = [c["name"] for c in metrics["last"]["per_class"]]
    expected = [[n, "n/a" if v != v else f"{100 * v:.2f}"] for n, v in zip(names, best["IoU"])]
    assert page.tables["per-class"][1:] == expected
    text = (tmp_path / "report.html").read_text()
    assert f"at iteration {metrics['best_iteration']}" in text
    # the prediction grid is TensorBoard's at the best iteration: 4 rows of image | gt | pred, 64-pixel tiles
    grid = np.asarray(Image.open(tmp_path / "report" / "val_predictions.png"))
    assert grid.shape == (2 + 4 * 66, 2 + 3 * 66, 3)


def test_report_tool_remakes_it_and_refuses_a_folder_without_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    train(compose_config(TINY + ["iterations=2", "val_interval=2"]), run_dir=run)  # no logger, no report
    assert not (run / "report.html").exists()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "report.py"), str(run)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"report: {run / 'report.html'}"
    page = check_page(run / "report.html")
    assert set(page.images) == {"report/loss.png", "report/val.png", "report/per_class_iou.png"}
    assert "logger without tensorboard" in (run / "report.html").read_text()
    # the refusal through the tool's main (in this process: one start of the tool above is enough)
    spec = importlib.util.spec_from_file_location("report_tool", ROOT / "tools" / "report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.json not found" in err
