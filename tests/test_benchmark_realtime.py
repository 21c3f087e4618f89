"""tools/benchmark.py --preset realtime on tiny inputs: its rows, the float32 and INT8 ONNX columns, and the
inference peak memory (seconds, not the preset's minutes)."""
import dataclasses
import importlib.util
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import benchmarks.int8 as int8
from benchmarks import Row, preset
from benchmarks.config import REALTIME_PEERS
from benchmarks.measure import cpu_peak_bytes
from benchmarks.models import build, make_inference_input
from segdense.export import export_onnx

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_realtime_preset_compares_the_five_models_with_the_two_peers_at_cityscapes_sizes():
    rows, settings = preset("realtime")
    assert [(r.impl, r.backbone, r.head) for r in rows] == [
        ("segdense", "fchardnet70", "fchardnet"), ("segdense", "fcdensenet56", "tiramisu"),
        ("segdense", "fcdensenet103", "tiramisu"), ("segdense", "densenet121", "deeplabv3plus_lite"),
        *[("peer", p, None) for p in REALTIME_PEERS]]
    assert all(r.size == (512, 1024) and r.infer_size == (1024, 2048) and r.infer_batch == 1 for r in rows)
    assert all(r.num_classes == 19 and r.amp is None and r.device == "cpu" for r in rows)
    # batch 1, but torchvision's DeepLabV3 (its image-pooling BatchNorm cannot train on one image)
    assert [r.batch for r in rows] == [1, 1, 1, 1, 1, 2]
    assert [r.memory_efficient for r in rows] == [False, False, True, False, False, False]
    assert settings.int8 and settings.measure_memory
    gpu_rows, gpu_settings = preset("realtime", device="cuda")
    assert not gpu_settings.int8  # no ONNX rows on CUDA: bf16 and float32 eager
    assert sorted({r.amp for r in gpu_rows}, key=str) == [None, "bf16"] and len(gpu_rows) == 2 * len(rows)
    assert all(r.batch == 8 and r.channels_last for r in gpu_rows)


def test_fchardnet_head_option_builds_the_authors_final_conv_with_align_corners():
    row = preset("realtime", infer_size=(64, 128), train_size=(64, 64), only=("fchardnet70",))[0][0]
    model = build(row)
    assert sum(p.numel() for p in model.parameters()) == 4_119_257  # the authors' count at 19 classes
    assert model.head.align_corners is True
    assert make_inference_input(row).shape == (1, 3, 64, 128)


def test_realtime_run_times_both_exports_and_the_ratio_is_from_the_measured_times(tmp_path, capsys):
    out = tmp_path / "rt.json"
    args = ["--preset", "realtime", "--only", "fchardnet70", "--infer-size", "64", "128", "--train-size", "128", "128",
            "--reps", "2", "--no-memory", "--matmul-size", "256", "--json", str(out)]
    assert _benchmark_cli().main(args) == 0
    printed = capsys.readouterr().out
    assert "int8/onnx" in printed and "cpu_capability" in printed and "calibrated on 2 seeded random" in printed
    [row] = json.loads(out.read_text())["rows"]
    assert row["error"] is None and row["label"].endswith("b1x128x128 inf1x64x128 plain")
    onnx_s, int8_s = row["onnx_s_raw"], row["int8_s_raw"]
    assert len(onnx_s) == len(int8_s) == 2 and min(onnx_s + int8_s) > 0
    assert row["int8_vs_onnx"] == pytest.approx(statistics.median(onnx_s) / statistics.median(int8_s))
    assert row["int8_img_s"] == pytest.approx(1 / statistics.median(int8_s))
    assert row["infer_img_s"] == pytest.approx(1 / statistics.median(row["infer_s_raw"]))  # one image
    assert row["train_img_s"] == pytest.approx(1 / statistics.median(row["train_s_raw"]))
    info = row["int8_info"]
    assert info["calibration"] == "2 seeded random image(s) of 64x128"
    assert info["quantize_nodes"] > 50  # the INT8 file is quantized throughout (FC-HarDNet-70 has 70 convolutions)


def test_cli_only_names_no_realtime_model_is_one_clear_error(capsys):
    assert _benchmark_cli().main(["--preset", "realtime", "--only", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--only resnet18" in err and "fchardnet70" in err and "Traceback" not in err


def test_cli_realtime_sizes_without_the_realtime_preset_are_refused(capsys):
    assert _benchmark_cli().main(["--quick", "--infer-size", "64", "64"]) == 2
    err = capsys.readouterr().err
    assert "--infer-size: options of --preset realtime only" in err and "Traceback" not in err


def test_inference_peak_memory_holds_at_least_the_logits_eager_and_in_onnx_runtime(tmp_path):
    row = Row("segdense", backbone="densenet_custom", units=(2, 2, 2, 2), growth_rate=8, head="fcn",
              output_stride=8, batch=1, crop=64, infer_size=(256, 384), num_classes=19)
    logits = 19 * 256 * 384 * 4
    path = export_onnx(build(row), tmp_path / "tiny.onnx")
    for onnx_path in (None, path):
        peak = cpu_peak_bytes(row, "infer", onnx_path)
        assert logits <= peak < 100 * logits, onnx_path
    with pytest.raises(ValueError, match="kind must be"):
        cpu_peak_bytes(row, "train", path)


class _RecordingSession:
    def __init__(self):
        self.options = []

    def get_inputs(self):
        return [SimpleNamespace(name="x")]

    def run(self, outputs, feed, run_options=None):
        self.options.append(run_options)


def test_realtime_timed_runs_shrink_onnx_runtime_arena_after_every_run(monkeypatch):
    """Without the shrink, FC-DenseNet56's float32 arena grew 9.2 -> 15.6 GB over two full-size runs and the preset
    was killed for memory; every warm-up and timed run of both files must carry the option."""
    sessions = [_RecordingSession(), _RecordingSession()]
    monkeypatch.setattr(int8, "export_pair", lambda model, folder, calibration: ("a.onnx", "b.onnx", {}))
    monkeypatch.setattr(int8.onnx, "load", lambda path: SimpleNamespace(graph=SimpleNamespace(node=[])))
    recorded = list(sessions)
    monkeypatch.setattr(int8, "onnx_session", lambda path, threads: sessions.pop(0))
    row = preset("realtime", infer_size=(32, 32), train_size=(32, 32), only=("fchardnet70",))[0][0]
    settings = dataclasses.replace(preset("realtime")[1], warmup=1, reps=3, measure_memory=False)
    int8.measure_int8(row, torch.nn.Identity(), torch.zeros(1, 3, 32, 32), settings, log=lambda s: None)
    for s in recorded:
        assert len(s.options) == 4  # one warm-up, three timed
        assert all(o.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0" for o in s.options)
