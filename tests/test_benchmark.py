"""tools/benchmark.py and benchmarks on a tiny DenseNet (seconds, not minutes)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from benchmarks import Row, Settings, run, summarise, table
from benchmarks.runner import Result
from benchmarks.measure import cpu_peak_bytes
from benchmarks.models import build
from benchmarks.scene import SceneCase, scene_cases, scene_table, summarise_scene

ROOT = Path(__file__).resolve().parent.parent
# The tool imports the installed benchmarks/ and segdense/ (pip install -e .); this checkout's, also before a
# reinstall has registered benchmarks/.
TOOL_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
TINY = dict(backbone="densenet_custom", units=(2, 2, 2, 2), growth_rate=8, batch=1, crop=64)


def test_torchvision_baseline_has_the_same_dilation_and_parameters():
    for os_ in (32, 8):
        tv = build(Row("torchvision", output_stride=os_, **TINY))
        sd = build(Row("segdense", output_stride=os_, **TINY))
        assert sum(p.numel() for p in tv.parameters()) == sum(p.numel() for p in sd.parameters())
        x = torch.randn(1, 3, 64, 64)
        assert tv(x).shape == sd(x).shape == (1, sd.net.num_features, 64 // os_, 64 // os_)


def test_run_reports_times_ratios_and_flops_for_each_row():
    rows = [Row("torchvision", output_stride=8, **TINY), Row("segdense", output_stride=8, **TINY),
            Row("segdense", output_stride=8, memory_efficient=True, **TINY)]
    measured = run(rows, Settings(warmup=1, reps=2, measure_memory=False, matmul_size=256), log=lambda s: None)
    summary = summarise(measured)
    assert [d["error"] for d in summary] == [None, None, None]
    theoretical = measured["peak"]["theoretical"]
    assert measured["peak_flops"] == max([*measured["peak"]["measured"].values(),
                                          theoretical["flops"] if theoretical else 0])
    for d in summary:
        assert len(d["train_s_raw"]) == 2 and d["train_step_s"] > 0 and d["infer_img_s"] > 0
        assert 0 < d["infer_peak_frac"] and 0 < d["train_peak_frac"] and d["gflops_per_img"] > 0
        if theoretical:  # x86 at AVX2/AVX512: no network beats the cores' FMA rate
            assert d["infer_peak_frac"] <= 1 and d["train_peak_frac"] <= 1
    assert summary[0]["train_vs_tv"] is None  # the baseline itself
    # Inference FLOPs equal an independent count: every convolution's 2*Cin/groups*k*k*Cout*Hout*Wout.
    for row, d in zip(rows, summary):
        assert d["gflops_per_img"] * 1e9 == pytest.approx(_conv_flops(build(row), torch.randn(1, 3, 64, 64)), rel=1e-3)
    # torchvision's transitions convolve before pooling, so it does more (transition 1 pools at OS8).
    assert summary[1]["gflops_per_img"] < summary[0]["gflops_per_img"]
    text = table(summary)
    assert all(d["label"] in text for d in summary)


def _conv_flops(model, x):
    """FLOPs of a forward pass counted from each convolution's output shape (forward hooks)."""
    total = []

    def hook(m, inp, out):
        total.append(2 * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] * out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return sum(total)


def test_ratios_are_against_the_baselines_of_the_same_configuration():
    kw = dict(TINY, output_stride=8)
    rows = [Row("torchvision", **kw), Row("segdense", **kw), Row("segdense", memory_efficient=True, **kw),
            Row("segdense", **dict(kw, output_stride=32))]
    fake = [Result(r, train_s=[t], infer_s=[t / 2]) for r, t in zip(rows, (0.4, 0.2, 0.3, 0.1))]
    summary = summarise({"results": fake, "peak_flops": 1.0})
    assert summary[1]["train_vs_tv"] == pytest.approx(0.5) and summary[1]["infer_vs_tv"] == pytest.approx(0.5)
    assert summary[2]["train_vs_tv"] == pytest.approx(0.75) and summary[2]["train_vs_plain"] == pytest.approx(1.5)
    # The OS32 row has no torchvision or plain twin at its own configuration: no ratio at all.
    assert summary[3]["train_vs_tv"] is None and summary[3]["train_vs_plain"] is None


def test_onnx_runtime_rows_time_both_runtimes_alternately_and_count_segdense_flops():
    rows = [Row("torchvision", output_stride=32, **TINY), Row("segdense", output_stride=32, **TINY)]
    measured = run(rows, Settings(warmup=1, reps=3, measure_memory=False, matmul_size=256, onnx=True),
                   log=lambda s: None)
    tv, se = measured["results"]
    assert not tv.onnx_s and len(se.onnx_s) == len(se.onnx_eager_s) == 3
    summary = summarise(measured)
    assert summary[1]["onnx_vs_eager"] == pytest.approx(
        sorted(se.onnx_eager_s)[1] / sorted(se.onnx_s)[1])
    # Pooling before the transitions' 1x1 convs: fewer FLOPs than torchvision's same network.
    assert summary[1]["gflops_per_img"] < summary[0]["gflops_per_img"]


def test_cpu_peak_memory_is_measured_in_a_subprocess_and_is_lower_when_memory_efficient():
    kw = dict(TINY, units=(12,), growth_rate=16, batch=2, crop=96, output_stride=4)
    plain = cpu_peak_bytes(Row("segdense", **kw))
    eff = cpu_peak_bytes(Row("segdense", memory_efficient=True, **kw))
    assert 0 < eff < plain


def test_peer_rows_train_torchvision_segmentation_models_with_the_same_loss_and_classes():
    rows = [Row("peer", backbone="fcn_resnet50", output_stride=8, batch=1, crop=64, num_classes=3),
            Row("segdense", head="fcn", output_stride=8, num_classes=3, **dict(TINY, batch=1, crop=64))]
    peer = build(rows[0])
    assert type(peer).__name__ == "FCN" and peer.classifier[-1].out_channels == 3
    assert peer.backbone.layer4[1].conv2.dilation == (4, 4)  # output stride 8
    measured = run(rows, Settings(warmup=1, reps=2, measure_memory=False, measure_flops=False,
                                  matmul_size=256), log=lambda s: None)
    summary = summarise(measured)
    assert [d["error"] for d in summary] == [None, None]
    # fcn_resnet50 is not the reference peer (deeplabv3_resnet50): no ratio without that row.
    assert summary[1]["train_vs_peer"] is None
    rows[0] = dataclasses.replace(rows[0], backbone="deeplabv3_resnet50")
    backbone_row = Row("segdense", output_stride=8, num_classes=3, **dict(TINY, batch=1, crop=64))
    fake = [Result(rows[0], train_s=[0.4]), Result(rows[1], train_s=[0.1]), Result(backbone_row, train_s=[0.05])]
    summary = summarise({"results": fake, "peak_flops": 1.0})
    assert summary[0]["train_vs_peer"] is None and summary[1]["train_vs_peer"] == pytest.approx(0.25)
    assert summary[2]["train_vs_peer"] is None  # a bare backbone is not compared with a segmenter


def test_row_rejects_a_peer_row_that_is_not_a_peer_model():
    with pytest.raises(ValueError, match="peer rows"):
        Row("peer", backbone="densenet121", output_stride=8)


def test_row_rejects_a_torchvision_head_row():
    with pytest.raises(ValueError, match="backbone-only"):
        Row("torchvision", head="deeplabv3")


def test_cli_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--backbone", "densenet_custom",
           "--units", "2", "2", "2", "2", "--growth-rate", "8", "--output-stride", "32", "--batch", "1",
           "--crop", "64", "--reps", "1", "--warmup", "0", "--mode", "plain", "--no-memory", "--matmul-size", "256",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=TOOL_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "tv custom2-2-2-2k8 os32 b1x64 plain" in proc.stdout
    data = json.loads(out.read_text())
    assert data["peak_flops"] == data["peak"]["flops"] >= max(data["peak"]["measured"].values()) > 0
    assert "peak (torch.float32): " in proc.stdout and "  measured: " in proc.stdout
    assert {d["config"]["impl"] for d in data["rows"]} == {"torchvision", "segdense"}
    assert len(data["rows"]) == 2


def test_cli_mode_keeps_only_that_memory_mode():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rows, _ = cli.rows_and_settings(cli.parse_args(["--output-stride", "16", "--mode", "plain"]))
    assert [r.label() for r in rows] == ["tv densenet121 os16 b2x256 plain", "se densenet121 os16 b2x256 plain"]
    rows, _ = cli.rows_and_settings(cli.parse_args(["--quick", "--mode", "mem-eff"]))
    # Peer rows (torchvision's segmentation models) have no memory mode and stay for the ratios.
    assert {r.backbone for r in rows if r.impl == "peer"} == {"deeplabv3_resnet50", "fcn_resnet50"}
    assert all(r.memory_efficient for r in rows if r.impl != "peer")


def test_compile_adds_a_compiled_twin_of_each_row_and_reports_its_speedup():
    import importlib.util

    from benchmarks.runner import Result

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rows, _ = cli.rows_and_settings(cli.parse_args(["--output-stride", "16", "--mode", "plain", "--no-baseline", "--compile"]))
    assert [r.label() for r in rows] == ["se densenet121 os16 b2x256 plain", "se densenet121 os16 b2x256 plain compile"]
    eager, compiled = Result(rows[0], train_s=[0.3, 0.2, 0.2], infer_s=[0.1]), Result(rows[1], train_s=[0.1, 0.1, 0.2], infer_s=[0.04])
    summary = summarise({"results": [eager, compiled], "peak_flops": 1.0})
    assert summary[0]["train_compile_speedup"] is None
    assert summary[1]["train_compile_speedup"] == pytest.approx(2.0)
    assert summary[1]["infer_compile_speedup"] == pytest.approx(2.5)
    assert "cmp×" in table(summary)


def _benchmark_cli():
    """tools/benchmark.py as a module: its main(argv) runs here what its command line runs (that command line
    itself runs in test_cli_writes_table_and_json)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_bad_configuration_is_one_clear_error(capsys):
    args = ["--backbone", "densenet_custom", "--output-stride", "32", "--crop", "16", "--no-baseline"]
    assert _benchmark_cli().main(args) == 2
    err = capsys.readouterr().err
    assert "crop >= output_stride" in err and "Traceback" not in err


def test_cli_exits_non_zero_when_a_row_fails(tmp_path, capsys):
    # deeplabv3_resnet50 at batch 1 cannot train (its image-pooling BatchNorm sees one value per
    # channel): that row fails, the others are still measured, and the tool says so and exits 1.
    args = ["--backbone", "densenet_custom", "--units", "1", "1", "1", "1", "--growth-rate", "4", "--head", "fcn",
            "--output-stride", "8", "--batch", "1", "--crop", "64", "--peers", "--reps", "1", "--warmup", "0",
            "--no-memory", "--no-flops", "--matmul-size", "128", "--json", str(tmp_path / "b.json")]
    assert _benchmark_cli().main(args) == 1
    err = capsys.readouterr().err
    assert "1 row(s) failed: tv deeplabv3_resnet50 os8 b1x64" in err
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["error"] is None for r in rows] == [True, True, False, True]


def test_a_custom_densenet_head_row_builds_the_rows_architecture():
    model = build(Row("segdense", head="fcn", output_stride=8, **TINY))
    assert model.backbone.num_units_per_block == (2, 2, 2, 2) and model.backbone.growth_rate == 8


def test_cuda_graphs_twins_are_segdense_cuda_rows_that_build_graphed_blocks():
    import importlib.util

    from benchmarks.models import _dense_options

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--device", "cuda", "--output-stride", "8", "--head", "deeplabv3", "--peers", "--cuda-graphs"]
    rows, _ = cli.rows_and_settings(cli.parse_args(args))
    graphed = [r for r in rows if r.cuda_graphs]
    assert [r.label() for r in graphed] == ["se densenet121 deeplabv3 os8 b2x256 plain graphs",
                                            "se densenet121 deeplabv3 os8 b2x256 mem-eff graphs"]
    assert _dense_options(graphed[1]) == {"cuda_graphs": True}
    assert _dense_options(dataclasses.replace(graphed[1], cuda_graphs=False)) == {}
    assert graphed[0].group_key() == dataclasses.replace(graphed[0], cuda_graphs=False).group_key()
    with pytest.raises(ValueError, match="cuda_graphs rows are segdense rows on device='cuda'"):
        Row(cuda_graphs=True)


def test_rdnet_preset_builds_its_four_rows_under_one_head():
    from benchmarks.config import preset
    from segdense.backbones.rdnet import DenseStage

    rows, settings = preset("rdnet", device="cpu")
    assert [r.label() for r in rows] == [
        "se rdnet_tiny upernet os32 b2x256 plain", "se rdnet_tiny upernet os32 b2x256 mem-eff",
        "timm rdnet_tiny upernet os32 b2x256 mem-eff", "tv deeplabv3_resnet50 os8 b2x256"]
    assert settings.reps >= 3
    cuda_rows, _ = preset("rdnet", device="cuda")
    assert {(r.batch, r.crop, r.amp, r.device) for r in cuda_rows} == {(8, 512, "bf16", "cuda")}
    plain, eff, timm_ckpt, peer = (build(r) for r in rows)
    assert [s.memory_efficient for s in plain.backbone.modules() if isinstance(s, DenseStage)] == [False] * 7
    assert [s.memory_efficient for s in eff.backbone.modules() if isinstance(s, DenseStage)] == [True] * 7
    assert timm_ckpt.backbone.net.grad_checkpointing and type(peer).__name__ == "DeepLabV3"
    # The same network under the same head: timm's backbone reports segdense's feature maps, and with segdense's
    # weights loaded (timm's module names, '_' for '.' at the top level) gives the same logits.
    assert timm_ckpt.backbone.feature_info == plain.backbone.feature_info
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(timm_ckpt) == count(plain) == count(eff)
    state = {k.replace("backbone.net.stem_", "backbone.stem.").replace("backbone.net.dense_stages_",
                                                                       "backbone.dense_stages."): v
             for k, v in timm_ckpt.state_dict().items()}
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), timm_ckpt.eval()(x), rtol=1e-4, atol=1e-4)


def test_onnx_models_are_timed_side_by_side_and_the_heavier_one_is_slower(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    light = torch.nn.Conv2d(3, 4, 1)
    heavy = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1),
                                *[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(6)])
    paths = []
    for name, model in (("light", light), ("heavy", heavy)):
        paths.append(tmp_path / f"{name}.onnx")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, 8, 8),), str(paths[-1]), dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {2: "h", 3: "w"}})
    args = ["--onnx-models", *map(str, paths), "--crop", "48", "--batch", "1", "--threads", "1", "--reps", "3",
            "--warmup", "1", "--json", str(tmp_path / "onnx.json")]
    assert _benchmark_cli().main(args) == 0
    result = json.loads((tmp_path / "onnx.json").read_text())
    assert result["input"] == [1, 3, 48, 48] and result["machine"]["ort_threads"] == 1
    first, second = result["rows"]
    assert [len(first["times_s"]), len(second["times_s"])] == [3, 3]
    assert first["speed_vs_first"] == 1.0 and first["precision"] == "?"  # not a segdense export
    median = lambda xs: sorted(xs)[1]
    assert second["speed_vs_first"] == pytest.approx(median(first["times_s"]) / median(second["times_s"]))
    assert second["speed_vs_first"] < 1.0  # about 6,000x the work of the 1x1 conv
    out = capsys.readouterr().out
    assert "light.onnx" in out and "heavy.onnx" in out and "1 thread(s); input 1x3x48x48" in out
    assert _benchmark_cli().main(["--onnx-models", str(tmp_path / "missing.onnx")]) == 2
    assert "ONNX model(s) not found:" in capsys.readouterr().err


CPUINFO = """processor\t: 0
physical id\t: 0
core id\t\t: 0
cpu MHz\t\t: 2100.000

processor\t: 1
physical id\t: 0
core id\t\t: 0
cpu MHz\t\t: 3400.500

processor\t: 2
physical id\t: 0
core id\t\t: 1
cpu MHz\t\t: 2000.000
"""


def test_theoretical_peak_is_clock_times_fma_units_lanes_two_flops_and_cores(tmp_path):
    from benchmarks.peak import cpu_fma_peak, fma_peak

    assert fma_peak(2.5e9, cores=2, lanes=16) == 2.5e9 * 2 * 16 * 2 * 2  # two FMA units per core by default
    assert fma_peak(3e9, cores=4, lanes=8, fma_units=1) == 3e9 * 1 * 8 * 2 * 4
    # No cpufreq: the highest 'cpu MHz'; CPUs 0 and 1 are SMT siblings of one core, so three threads get two cores.
    peak = cpu_fma_peak(3, "AVX512", CPUINFO, {0, 1, 2}, sys_cpu=tmp_path)
    assert peak == {"flops": 3400.5e6 * 2 * 16 * 2 * 2, "frequency_hz": 3400.5e6, "cores": 2, "lanes": 16,
                    "fma_units": 2, "capability": "AVX512", "frequency_source": "/proc/cpuinfo cpu MHz"}
    assert cpu_fma_peak(1, "AVX2", CPUINFO, {0, 1, 2}, sys_cpu=tmp_path)["flops"] == 3400.5e6 * 2 * 8 * 2 * 1
    assert cpu_fma_peak(2, "AVX512", CPUINFO, {0, 1}, sys_cpu=tmp_path)["cores"] == 1  # the affinity's cores only
    # cpufreq's cpuinfo_max_freq (kHz, the boost clock) wins over the current clock.
    for cpu, khz in ((0, 3_700_000), (2, 3_500_000)):
        (tmp_path / f"cpu{cpu}" / "cpufreq").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{khz}\n")
    peak = cpu_fma_peak(3, "AVX512", CPUINFO, {0, 1, 2}, sys_cpu=tmp_path)
    assert (peak["frequency_hz"], peak["frequency_source"]) == (3.7e9, "cpufreq cpuinfo_max_freq")
    assert cpu_fma_peak(2, "DEFAULT", CPUINFO, {0, 1, 2}, sys_cpu=tmp_path) is None  # vector width unknown


def test_the_peak_is_the_higher_of_the_best_measured_shape_and_the_theoretical_peak():
    from benchmarks.peak import choose_peak

    measured = {"mm 64x64x64": 100e9, "conv1x1 8ch 1^2": 200e9}
    assert choose_peak(measured, {"flops": 300e9})["flops"] == 300e9
    assert choose_peak(measured, {"flops": 300e9})["source"] == "theoretical FMA peak"
    assert choose_peak(measured, {"flops": 150e9})["source"] == "measured (conv1x1 8ch 1^2)"
    assert choose_peak(measured, None)["flops"] == 200e9
    # A row faster than every measured product: above 100 % of the measured best, below 100 % of the chosen peak.
    row = Row("segdense", output_stride=8, **TINY)
    fake = [Result(row, train_s=[1.0], infer_s=[1.0], flops_infer=250e9, flops_train=250e9)]
    for theoretical, fraction in ((None, 1.25), ({"flops": 500e9}, 0.5)):
        [d] = summarise({"results": fake, "peak_flops": choose_peak(measured, theoretical)["flops"]})
        assert d["infer_peak_frac"] == pytest.approx(fraction) and d["train_peak_frac"] == pytest.approx(fraction)


def test_every_gemm_probe_counts_the_flops_torch_counts_for_it():
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.peak import gemm_probes

    probes = gemm_probes("cpu", torch.float32, 256)
    assert len({p.name for p in probes}) == len(probes) == 7
    for probe in probes:
        with FlopCounterMode(display=False) as counter:
            probe.run()
        assert probe.flops == counter.get_total_flops(), probe.name


def test_describe_peak_names_the_best_shape_and_the_assumptions():
    from benchmarks.peak import choose_peak
    from benchmarks.report import describe_peak

    theory = {"flops": 332.8e9, "frequency_hz": 2.6e9, "frequency_source": "/proc/cpuinfo cpu MHz", "fma_units": 2,
              "lanes": 16, "capability": "AVX512", "cores": 2}
    text = describe_peak({**choose_peak({"mm 8x8x8": 1e9, "mm 4x4x4": 2e9}, theory), "dtype": "torch.float32"})
    assert text.splitlines() == [
        "peak (torch.float32): 332.8 GFLOP/s, the higher of:",
        "  measured: 2.0 GFLOP/s, the best of 2 GEMM shapes (mm 4x4x4)",
        "  theoretical: 332.8 GFLOP/s = 2.60 GHz (/proc/cpuinfo cpu MHz) x 2 FMA units per core (assumed) x "
        "16 float32 lanes (AVX512) x 2 FLOPs per FMA x 2 core(s)"]


def test_as_avx2_runs_the_benchmark_once_more_with_avx512_hidden(tmp_path):
    from benchmarks import run_as_avx2

    if run_as_avx2.unsupported_reason():
        pytest.skip(f"CPUID cannot be masked here: {run_as_avx2.unsupported_reason()}")
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--as-avx2", "--backbone", "densenet_custom",
           "--units", "1", "1", "1", "1", "--growth-rate", "4", "--output-stride", "32", "--batch", "1", "--crop", "64",
           "--reps", "1", "--warmup", "0", "--mode", "plain", "--no-baseline", "--no-memory", "--no-flops",
           "--matmul-size", "64", "--json", str(out)]
    env = {k: v for k, v in TOOL_ENV.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("hidden from CPUID") == 1  # re-executed under the library once, not again
    data = json.loads(out.read_text())
    assert Path(data["machine"]["ld_preload"].split()[0]).name.startswith("hide_avx512-")
    avx2 = "avx2" in run_as_avx2.cpu_flags()
    assert data["machine"]["cpu_capability"] == ("AVX2" if avx2 else "DEFAULT")
    if avx2:  # the theoretical peak follows the kernels' vector width
        assert data["peak"]["theoretical"]["lanes"] == 8


def test_as_avx2_where_cpuid_cannot_be_masked_is_one_error(monkeypatch, capsys):
    from benchmarks import run_as_avx2

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(run_as_avx2, "unsupported_reason", lambda: "needs Linux on x86-64, this is Darwin on arm64")
    assert _benchmark_cli().main(["--as-avx2", "--quick"]) == 2
    assert capsys.readouterr().err == ("error: cannot hide AVX-512 here: needs Linux on x86-64, this is Darwin on "
                                       "arm64\n")


def test_scene_preset_pairs_monai_and_segdense_on_each_monai_side_then_segdense_alone():
    assert [c.label() for c in scene_cases(20000, [10000, 5000])] == [
        "monai 5000^2", "segdense 5000^2", "monai 10000^2", "segdense 10000^2", "segdense 20000^2"]
    assert [c.label() for c in scene_cases(8000, [8000])] == ["monai 8000^2", "segdense 8000^2"]
    assert {(c.window, c.stride, c.batch) for c in scene_cases()} == {(512, 341, 4)}  # segdense's default stride
    with pytest.raises(ValueError, match="stride <= window <= side"):
        SceneCase("segdense", 300)
    with pytest.raises(ValueError, match="scene impl must be one of"):
        SceneCase("mmseg", 1000)


def test_scene_summary_compares_speed_on_the_same_side_and_memory_with_monai_s_largest_side():
    measured = {("monai", 5000): (25.0, 1000.0), ("segdense", 5000): (20.0, 400.0), ("monai", 10000): (80.0, 3000.0),
                ("segdense", 10000): (100.0, 450.0), ("segdense", 20000): (400.0, 600.0)}
    results = [{"case": dataclasses.asdict(c), "label": c.label(), "error": None, "ready_rss_mb": 100.0,
                "seconds": measured[c.impl, c.side][0], "peak_rss_mb": measured[c.impl, c.side][1]}
               for c in scene_cases(20000, [5000, 10000])]
    summary = {d["label"]: d for d in summarise_scene(results)}
    assert summary["monai 10000^2"]["megapixels_per_s"] == pytest.approx(1.25)
    assert summary["segdense 5000^2"]["speed_vs_monai"] == pytest.approx(1.25)
    assert summary["segdense 10000^2"]["speed_vs_monai"] == pytest.approx(0.8)
    assert summary["segdense 10000^2"]["memory_vs_monai"] == pytest.approx(0.15)
    assert summary["segdense 10000^2"]["growth_vs_monai"] == pytest.approx(350 / 2900)
    big = summary["segdense 20000^2"]  # no MONAI run there: memory against its largest scene, no speed ratio
    assert big["vs_side"] == 10000 and big["memory_vs_monai"] == pytest.approx(0.2) and big["speed_vs_monai"] is None
    assert summary["monai 5000^2"]["speed_vs_monai"] is None
    results[1] = {**results[1], "error": "killed"}
    failed = summarise_scene(results)[1]
    assert failed["megapixels_per_s"] is None and "failed: killed" in scene_table(summarise_scene(results))


@pytest.mark.slow
def test_scene_preset_measures_both_tools_in_fresh_processes_and_their_labels_agree(tmp_path, capsys):
    pytest.importorskip("monai", reason="MONAI is the scene preset's peer (pip install -e '.[bench]')")
    args = ["--preset", "scene", "--scene-side", "600", "--monai-side", "600", "--scene-folder", str(tmp_path),
            "--json", str(tmp_path / "scene.json")]
    assert _benchmark_cli().main(args) == 0
    rows = json.loads((tmp_path / "scene.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["monai 600^2", "segdense 600^2"]
    for r in rows:
        assert r["error"] is None and r["seconds"] > 0 and r["peak_rss_mb"] > r["ready_rss_mb"] > 0
        assert len(r["load"]) == 2
    assert rows[1]["speed_vs_monai"] > 0 and rows[1]["vs_side"] == 600
    monai, segdense = (tifffile.imread(tmp_path / f"labels_{impl}_600.tif") for impl in ("monai", "segdense"))
    assert monai.shape == segdense.shape == (600, 600) and len(np.unique(segdense)) == 2
    assert (monai == segdense).mean() > 0.99  # the same model and windows; MONAI floors its weights (test_scene_monai)
    assert "segdense 600^2" in capsys.readouterr().out
