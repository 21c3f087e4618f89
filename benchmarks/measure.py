"""Measurements: training-step and inference time, peak training memory, FLOPs (the FLOP/s peak: peak.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from segdense.inference.onnx_model import onnx_session
from segdense.runtime import autocast_context

from .config import Row
from .models import build, loss_of, make_inference_input, make_input

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
SPIN_PAUSE_S = 0.2  # before each timed run of two runtimes taking turns (their threads spin-wait after a run)


def autocast(row: Row):
    return autocast_context(torch.device(row.device), _AMP.get(row.amp))


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_step(row: Row, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Forward, loss, backward; gradients dropped afterwards (``zero_grad(set_to_none=True)``)."""
    with autocast(row):
        out = model(x)
    loss_of(row, out, y).backward()
    for p in model.parameters():
        p.grad = None


def infer(row: Row, model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode(), autocast(row):
        model(x)


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def take_turns(sessions: list, feeds: list[dict], warmup: int, reps: int,
               log: Callable[[str], None] | None = None, run_options=None) -> list[list[float]]:
    """Seconds per ``session.run`` of each ONNX Runtime session on its feed: ``warmup`` runs each, then ``reps``
    rounds taking turns, each run after a pause, so a change in load hits every session alike. ``run_options``
    (an ``onnxruntime.RunOptions``) goes to every run."""
    for i, (session, feed) in enumerate(zip(sessions, feeds)):
        if log:
            log(f"warm-up: model {i + 1}/{len(sessions)}")
        for _ in range(warmup):
            session.run(None, feed, run_options)
    times: list[list[float]] = [[] for _ in sessions]
    for rep in range(reps):
        if log:
            log(f"rep {rep + 1}/{reps}")
        for session, feed, t in zip(sessions, feeds, times):
            time.sleep(SPIN_PAUSE_S)
            start = time.perf_counter()
            session.run(None, feed, run_options)
            t.append(time.perf_counter() - start)
    return times


def count_flops(row: Row, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                x_infer: torch.Tensor | None = None) -> tuple[float, float]:
    """(inference FLOPs of ``x_infer`` (default ``x``), training-step FLOPs of ``x``), by
    ``torch.utils.flop_counter``."""
    model.eval()
    with FlopCounterMode(display=False) as fc:
        infer(row, model, x if x_infer is None else x_infer)
    inference = float(fc.get_total_flops())
    model.train()
    with FlopCounterMode(display=False) as fc:
        train_step(row, model, x, y)
    return inference, float(fc.get_total_flops())


# --- peak memory -----------------------------------------------------------------------------

def cuda_peak_bytes(row: Row, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak CUDA memory allocated during one training step, above what was allocated before it.
    CUDA-graphed rows: a replay allocates nothing (its memory was taken at capture and stays
    held), so a fresh model's first two steps (capture, replay) are measured instead, above what
    was allocated before it was built, less its parameters and buffers."""
    if row.cuda_graphs:
        return _graphed_cuda_peak_bytes(row, x, y)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(row, model, x, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _graphed_cuda_peak_bytes(row: Row, x: torch.Tensor, y: torch.Tensor) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = build(row)
    state = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for _ in range(2):
        train_step(row, model, x, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before - state


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_bytes_here(row: Row) -> int:
    """Run inside a fresh process: peak resident-set growth during one training step, after a
    warm-up step (so one-time caches don't count). Linux: VmHWM is reset via clear_refs."""
    torch.manual_seed(0)
    model = build(row)
    x, y = make_input(row)
    train_step(row, model, x, y)
    return _peak_growth(lambda: train_step(row, model, x, y))


def cpu_infer_peak_bytes_here(row: Row, onnx_path: str | None = None) -> int:
    """Run inside a fresh process: peak resident-set growth during the first inference of the row's one-image
    input (:func:`benchmarks.models.make_inference_input`) once the model (or the ONNX file ``onnx_path``, in an
    ONNX Runtime session) is loaded: the memory a deployment needs beside its weights, ONNX Runtime's arena (filled
    by the first run and kept) included."""
    torch.manual_seed(0)
    x = make_inference_input(row)
    if onnx_path is None:
        model = build(row).eval()
        return _peak_growth(lambda: infer(row, model, x))
    session = onnx_session(onnx_path)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return _peak_growth(lambda: session.run(None, feed))


def _peak_growth(fn) -> int:
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    fn()
    return (_status_kb("VmHWM") - base) * 1024


def cpu_peak_bytes(row: Row, kind: str = "train", onnx_path: str | os.PathLike | None = None,
                   timeout: float = 900.0) -> int:
    """Peak memory of a CPU row, measured in a fresh subprocess so rows don't contaminate each other: of a
    training step (``kind="train"``, :func:`cpu_peak_bytes_here`) or of an inference (``"infer"``, eager or the
    ONNX file ``onnx_path``: :func:`cpu_infer_peak_bytes_here`). glibc is told to mmap every block over 64 KiB, so
    freed tensors return to the OS and the resident set follows the live tensors."""
    if kind not in ("train", "infer") or (onnx_path is not None and kind != "infer"):
        raise ValueError(f"kind must be 'train' or 'infer' (ONNX files: 'infer'), got {kind!r}")
    root = str(Path(__file__).resolve().parents[1])  # the folder holding benchmarks/ (and segdense/)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    extra = [kind] + ([str(onnx_path)] if onnx_path is not None else [])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", row.to_json(), *extra],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"memory subprocess failed: {tail[0]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
