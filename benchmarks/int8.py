"""A row's float32 ONNX export and its INT8 twin, timed with ONNX Runtime on the CPU (``Settings.int8``,
``tools/benchmark.py --preset realtime``).

The float32 file is :func:`segdense.export.export_onnx`'s (the logits, dynamic batch, height and width); the INT8
file is :func:`segdense.export.quantize.quantize_int8`'s (BatchNorms folded, QDQ, per-channel int8 weights, uint8
activations), calibrated on ``Settings.calibration_images`` seeded random images of ``Settings.calibration_size``:
enough for the speed of the kernels, which does not depend on the ranges, and nothing to judge accuracy by (the
export's guard does that on real images). Both files run on the row's one-image inference input, alternating, each
run after a pause (ONNX Runtime's threads spin-wait for a while after a run), and each one's inference peak memory
is measured in a fresh process (:func:`benchmarks.measure.cpu_infer_peak_bytes_here`).

Each timed run hands its arena's unused memory back when it ends (:func:`shrinking_run_options`): with the arena
kept, FC-DenseNet56's float32 session at 1024x2048 grew from 9.2 GB after its first run to 15.6 GB after its
second, and the preset's two sessions of one row no longer fitted in 23 GB.
"""
from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Callable

import onnx
import torch
import torch.nn as nn

from segdense.export import export_onnx
from segdense.export.quantize import quantize_int8
from segdense.inference.onnx_model import onnx_session

from .config import Row, Settings
from .measure import cpu_peak_bytes, take_turns


def shrinking_run_options():
    """ONNX Runtime run options that shrink the CPU arena back at the end of each run
    (``memory.enable_memory_arena_shrinkage``), so a session's memory is its largest run's, not the sum of the
    arena's growth steps."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def calibration_images(settings: Settings, infer_size: tuple[int, int]) -> list[torch.Tensor]:
    """``settings.calibration_images`` seeded standard-normal images (3, H, W), ``settings.calibration_size`` but no
    larger than the inference input (ONNX Runtime's calibrator keeps every tensor of a run)."""
    size = [min(c, i) for c, i in zip(settings.calibration_size, infer_size)]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, *size, generator=g) for _ in range(settings.calibration_images)]


def export_pair(model: nn.Module, folder: Path, calibration: list[torch.Tensor]) -> tuple[Path, Path, dict]:
    """(float32 ONNX file, INT8 ONNX file, the quantizer's BatchNorm-folding counts and the INT8 graph's number of
    ``QuantizeLinear`` nodes) of ``model`` in ``folder``; ``model`` is left in training mode."""
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    try:
        export_onnx(model.eval(), fp32)
        counts = quantize_int8(fp32, int8, calibration)
    finally:
        model.train()
        gc.collect()  # the calibrator's tensors, before the timed sessions fill their arenas
    counts["quantize_nodes"] = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8)).graph.node)
    return fp32, int8, counts


def measure_int8(row: Row, model: nn.Module, x: torch.Tensor, settings: Settings,
                 log: Callable[[str], None] = print) -> dict:
    """``{"onnx_s", "int8_s"}``: the float32 and INT8 ONNX exports' seconds per run on ``x``; ``onnx_peak_bytes``
    and ``int8_peak_bytes``: their inference peak memory (``None`` without ``settings.measure_memory``); ``info``:
    how the INT8 file was calibrated, and its BatchNorm folding."""
    calibration = calibration_images(settings, tuple(x.shape[-2:]))
    with tempfile.TemporaryDirectory(prefix="segdense_int8_") as folder:
        fp32, int8, counts = export_pair(model, Path(folder), calibration)
        sessions = [onnx_session(path, torch.get_num_threads()) for path in (fp32, int8)]
        feed = {sessions[0].get_inputs()[0].name: x.cpu().numpy()}
        onnx_s, int8_s = take_turns(sessions, [feed, feed], max(1, settings.warmup), settings.reps,
                                    run_options=shrinking_run_options())
        del sessions
        peaks = [None, None]
        if settings.measure_memory:
            log(f"  inference peak memory of both ONNX files: {row.label()}")
            peaks = [cpu_peak_bytes(row, "infer", path) for path in (fp32, int8)]
    size = "x".join(map(str, calibration[0].shape[-2:]))
    return {"onnx_s": onnx_s, "int8_s": int8_s, "onnx_peak_bytes": peaks[0], "int8_peak_bytes": peaks[1],
            "info": {"calibration": f"{len(calibration)} seeded random image(s) of {size}", **counts}}
