"""Exported ONNX models timed side by side with ONNX Runtime on the CPU: a float32 export and its INT8 twin
(``tools/export.py quantize=int8``), or any other files, on one input, in one process, interleaved, so their ratio
is not skewed by load drifting between two phases. The first file is the baseline of the ratio column."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from segdense.inference.onnx_model import import_onnxruntime, onnx_session, read_onnx_metadata

from .measure import take_turns
from .runner import machine_info, median_spread


def _precision(session, path: Path) -> str:
    """``float32``/``int8``/... from the segdense metadata, or ``?`` for another program's ONNX file."""
    try:
        return str(read_onnx_metadata(session, path).get("precision", "float32"))
    except Exception:  # noqa: BLE001 - a file without segdense metadata is still timed
        return "?"


def time_onnx_models(paths: list[Path], size: int, batch: int, threads: int, reps: int, warmup: int,
                     log: Callable[[str], None] = print) -> dict:
    """Median, spread and min of ``reps`` runs of every model on one seeded (batch, 3, size, size) input; the runs
    alternate between the models, each after a pause (ONNX Runtime's threads spin-wait for a while after a run)."""
    ort = import_onnxruntime("timing ONNX models")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"ONNX model(s) not found: {', '.join(missing)}")
    sessions = [onnx_session(p, threads) for p in paths]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    times = take_turns(sessions, feeds, warmup, reps, log=log)
    rows = []
    for path, session, t in zip(paths, sessions, times):
        median, spread = median_spread(t)
        rows.append({"model": str(path), "precision": _precision(session, Path(path)),
                     "megabytes": os.path.getsize(path) / 1e6, "median_ms": 1e3 * median, "spread": spread,
                     "min_ms": 1e3 * min(t), "times_s": t, "speed_vs_first": times_ratio(times[0], t)})
    machine = dict(machine_info("cpu"), onnxruntime=ort.__version__, ort_threads=threads)
    return {"machine": machine, "input": [batch, 3, size, size], "reps": reps, "warmup": warmup, "rows": rows}


def times_ratio(baseline: list[float], other: list[float]) -> float:
    """How many times faster ``other`` runs than ``baseline`` (median over median)."""
    return median_spread(baseline)[0] / median_spread(other)[0]


def onnx_table(result: dict) -> str:
    """A plain-text table of :func:`time_onnx_models`' rows."""
    rows = result["rows"]
    width = max(len(Path(r["model"]).name) for r in rows)
    header = f"{'model':<{width}}  precision  {'MB':>6}  {'ms':>8}  {'±%':>5}  {'min ms':>8}  speed vs first"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{Path(r['model']).name:<{width}}  {r['precision']:<9}  {r['megabytes']:6.1f}  "
                     f"{r['median_ms']:8.1f}  {100 * r['spread']:5.1f}  {r['min_ms']:8.1f}  "
                     f"{r['speed_vs_first']:.2f}x")
    return "\n".join(lines)
