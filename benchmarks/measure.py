"""Measurements: training-step and inference time, peak training memory, FLOPs (the FLOP/s peak: peak.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from segdense.runtime import autocast_context

from .config import Row
from .models import build, loss_of, make_input

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def count_flops(row: Row, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(inference FLOPs, training-step FLOPs) of one batch, by ``torch.utils.flop_counter``."""
    model.eval()
    with FlopCounterMode(display=False) as fc:
        infer(row, model, x)
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
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    train_step(row, model, x, y)
    return (_status_kb("VmHWM") - base) * 1024


def cpu_peak_bytes(row: Row, timeout: float = 600.0) -> int:
    """Peak training memory of a CPU row, measured in a fresh subprocess so rows don't
    contaminate each other. glibc is told to mmap every block over 64 KiB, so freed tensors
    return to the OS and the resident set follows the live tensors."""
    root = str(Path(__file__).resolve().parents[1])  # the folder holding benchmarks/ (and segdense/)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", row.to_json()],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"memory subprocess failed: {tail[0]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
