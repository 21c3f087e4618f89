"""tools/compare.py: trains configurations through the real trainer and reports mIoU at equal
iterations and equal training time, as JSON, a markdown table and a PNG plot."""
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from segdense.config.compare_job import parse_run
from segdense.errors import ConfigError
from segdense.engine.comparison import at_time, summarize

from train_utils import TINY

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_tool", ROOT / "tools" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_comparison_end_to_end(tmp_path, capsys):
    common = [o for o in TINY if not o.startswith(("iterations", "val_interval"))] + ["iterations=4", "val_interval=2"]
    runs = ["fcn: head=fcn", "wider: head=fcn head.channels=32 output_stride=16"]
    assert load_tool().main(["--out", str(tmp_path), "--common", *common, *sum((["--run", r] for r in runs), [])]) == 0

    report = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["fcn", "wider"]
    for run in report["runs"]:
        assert [h["iteration"] for h in run["history"]] == [2, 4]
        assert 0 < run["history"][0]["train_seconds"] < run["history"][1]["train_seconds"]
        assert all(0.0 <= h["mIoU"] <= 1.0 for h in run["history"])
        assert run["overrides"][-1] in ("head=fcn", "output_stride=16")
    assert report["runs"][1]["parameters"] > report["runs"][0]["parameters"]
    assert report["equal_iterations"]["iteration"] == 4
    assert [row["mIoU"] for row in report["equal_iterations"]["rows"]] == [r["history"][-1]["mIoU"] for r in report["runs"]]
    shortest = min(r["history"][-1]["train_seconds"] for r in report["runs"])
    assert report["equal_time"]["train_seconds"] == shortest
    assert report["machine"]["cpu_capability"]

    table = (tmp_path / "comparison.md").read_text()
    assert "| fcn | `" in table and "| wider | `" in table and "mIoU @ it 4" in table
    assert "CPU capability" in table
    assert table in capsys.readouterr().out
    with Image.open(tmp_path / "comparison.png") as png:
        assert png.format == "PNG" and png.size[0] > 600

    # A second call reads finished runs back instead of retraining them.
    before = (tmp_path / "runs" / "fcn" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert load_tool().main(["--out", str(tmp_path), "--common", *common, "--run", runs[0]]) == 0
    assert (tmp_path / "runs" / "fcn" / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    # ... but not under another configuration of the same name.
    assert load_tool().main(["--out", str(tmp_path), "--common", *common, "--run", "fcn: head=fcn lr=0.5"]) == 2
    assert "holds a finished run with other overrides" in capsys.readouterr().err


def history(*points):
    return [{"iteration": i, "mIoU": m, "train_seconds": s} for i, m, s in points]


def test_equal_time_takes_what_each_run_had_reached():
    fast = {"name": "fast", "history": history((10, 0.2, 5.0), (20, 0.4, 10.0), (30, 0.5, 15.0))}
    slow = {"name": "slow", "history": history((10, 0.3, 8.0), (20, 0.6, 16.0))}
    summary = summarize([fast, slow])
    assert summary["equal_iterations"]["iteration"] == 20
    assert [r["mIoU"] for r in summary["equal_iterations"]["rows"]] == [0.4, 0.6]
    assert summary["equal_time"]["train_seconds"] == 15.0
    assert [(r["mIoU"], r["iteration"]) for r in summary["equal_time"]["rows"]] == [(0.5, 30), (0.3, 10)]
    assert at_time(slow["history"], 7.9) is None


def test_run_specs_parse_and_bad_names_are_refused():
    assert parse_run("os8: output_stride=8 head=deeplabv3") == ("os8", ["output_stride=8", "head=deeplabv3"])
    assert parse_run("output_stride=8") == ("output_stride=8", ["output_stride=8"])
    with pytest.raises(ConfigError, match="run name"):
        parse_run("a/b: output_stride=8")


def test_duplicate_run_names_are_refused(tmp_path):
    assert load_tool().main(["--out", str(tmp_path), "--run", "a: lr=0.1", "--run", "a: lr=0.2"]) == 2
    assert not (tmp_path / "runs").exists()
