"""Run a grid of rows side by side (interleaved repetitions) and collect the measurements."""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import Row, Settings
from .measure import (count_flops, cpu_peak_bytes, cuda_peak_bytes, infer, matmul_peak, sync, timed,
                      train_step)
from .models import build, make_input


@dataclass
class Result:
    row: Row
    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    onnx_s: list[float] = field(default_factory=list)
    onnx_eager_s: list[float] = field(default_factory=list)  # eager, alternating with onnx_s
    peak_bytes: int | None = None
    flops_infer: float | None = None  # per batch
    flops_train: float | None = None  # per batch, forward + backward of the plain network
    first_step_s: float | None = None  # first training step + first inference (compile time)
    error: str | None = None


def median_spread(xs: list[float]) -> tuple[float | None, float | None]:
    """Median and relative spread ((p75 - p25) / median) of repeated timings."""
    if not xs:
        return None, None
    med = statistics.median(xs)
    if len(xs) < 2:
        return med, 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return med, (q[2] - q[0]) / med


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "onednn_primitive_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")}
    try:
        info["cpu_model"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                 if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _safe(result: Result, fn: Callable[[], None], log) -> None:
    if result.error is not None:
        return
    try:
        fn()
    except Exception as e:  # one row failing must not lose the others' numbers
        result.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        log(f"  ! {result.row.label()}: {result.error}")


_SPIN_PAUSE_S = 0.2


def _onnx_times(row: Row, model, x, reps: int) -> tuple[list[float], list[float]]:
    """ONNX Runtime inference times and, alternating with them, eager inference times of the same
    model and input, so their ratio is not skewed by load drifting between two phases. Both
    runtimes' worker threads spin-wait for a while after a run (measured: eager 1.7x slower right
    after an ONNX Runtime run, unaffected after a 50 ms pause), so each run follows a pause."""
    import onnxruntime as ort

    model.eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {"x": x.cpu().numpy()}
    sess.run(None, feed)
    ort_s, eager_s = [], []
    for _ in range(reps):
        time.sleep(_SPIN_PAUSE_S)
        t = time.perf_counter()
        sess.run(None, feed)
        ort_s.append(time.perf_counter() - t)
        time.sleep(_SPIN_PAUSE_S)
        eager_s.append(timed(lambda: infer(row, model, x), row.device))
    model.train()
    return ort_s, eager_s


def run(rows: list[Row], settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Measure every row; rows' repetitions are interleaved so load changes hit all alike."""
    t0 = time.perf_counter()
    # oneDNN (CPU convolutions) caches 1024 compiled primitives by default. Interleaving many
    # rows (shapes x memory formats x passes) overflows it, and every call then recompiles its
    # kernels: measured 1.6-3x slower rows, worst for those with the most distinct primitives.
    # Read when the first primitive is made, so it takes effect if nothing ran a conv before.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
    device = rows[0].device
    if any(r.device != device for r in rows):
        raise ValueError("all rows of one run must use the same device")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in training; warm-up autotunes
    amp = next((r.amp for r in rows if r.amp), None)
    peak_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    peak = matmul_peak(device, peak_dtype, settings.matmul_size)
    log(f"matmul peak ({peak_dtype}): {peak / 1e9:.1f} GFLOP/s")

    results = [Result(r) for r in rows]
    models, inputs = {}, {}
    for res in results:
        def _build(res=res):
            torch.manual_seed(0)
            m = build(res.row)
            inputs[id(res)] = make_input(res.row)
            models[id(res)] = torch.compile(m) if res.row.compile else m
        _safe(res, _build, log)
    live = lambda: [r for r in results if r.error is None]

    log("warm-up ...")
    for i in range(settings.warmup):
        for res in live():
            x, y = inputs[id(res)]
            t = time.perf_counter()
            _safe(res, lambda: train_step(res.row, models[id(res)], x, y), log)
            _safe(res, lambda: (models[id(res)].eval(), infer(res.row, models[id(res)], x),
                                models[id(res)].train()), log)
            if i == 0 and res.error is None:
                sync(device)
                res.first_step_s = time.perf_counter() - t
                if res.row.compile:
                    log(f"  compiled {res.row.label()}: first training step + inference {res.first_step_s:.1f} s")
    log(f"timing {settings.reps} interleaved repetitions of {len(live())} rows ...")
    for _ in range(settings.reps):
        for res in live():
            x, y = inputs[id(res)]
            _safe(res, lambda: res.train_s.append(
                timed(lambda: train_step(res.row, models[id(res)], x, y), device)), log)
    for res in live():
        models[id(res)].eval()
    for _ in range(settings.reps):
        for res in live():
            x, _y = inputs[id(res)]
            _safe(res, lambda: res.infer_s.append(timed(lambda: infer(res.row, models[id(res)], x), device)), log)
    for res in live():
        models[id(res)].train()

    if settings.onnx and torch.device(device).type == "cpu":
        for res in live():
            r = res.row
            if r.impl == "segdense" and not r.memory_efficient and r.head is None and not r.compile:
                log(f"ONNX Runtime: {r.label()}")
                def _onnx(res=res, r=r):
                    ort_s, eager_s = _onnx_times(r, models[id(res)], inputs[id(res)][0], settings.reps)
                    res.onnx_s.extend(ort_s)
                    res.onnx_eager_s.extend(eager_s)
                _safe(res, _onnx, log)

    if settings.measure_flops:
        counted: dict[tuple, tuple[float, float]] = {}
        for res in live():
            # Per implementation: segdense's transitions pool before their 1x1 conv, so it does
            # fewer FLOPs than torchvision's DenseNet of the same architecture.
            key = (res.row.group_key(), res.row.impl)
            if key not in counted:
                plain = dataclasses.replace(res.row, memory_efficient=False, compile=False)
                def _count(plain=plain):
                    torch.manual_seed(0)
                    x, y = make_input(plain)
                    counted[key] = count_flops(plain, build(plain), x, y)
                _safe(res, _count, log)
            if key in counted:
                res.flops_infer, res.flops_train = counted[key]

    if settings.measure_memory:
        for res in live():
            if settings.memory_output_strides and res.row.output_stride not in settings.memory_output_strides:
                continue
            log(f"peak memory: {res.row.label()}")
            if torch.device(device).type == "cuda":
                x, y = inputs[id(res)]
                _safe(res, lambda: setattr(res, "peak_bytes",
                                           cuda_peak_bytes(res.row, models[id(res)], x, y)), log)
            else:
                _safe(res, lambda: setattr(res, "peak_bytes", cpu_peak_bytes(res.row)), log)

    # The peak is the best of a measurement before and after the rows, so a busy moment at the
    # start cannot understate it (and inflate every FLOP/s fraction).
    peak = max(peak, matmul_peak(device, peak_dtype, settings.matmul_size))
    log(f"matmul peak, best of start and end: {peak / 1e9:.1f} GFLOP/s")
    return {"machine": machine_info(device), "settings": dataclasses.asdict(settings),
            "matmul_peak_flops": peak, "matmul_peak_dtype": str(peak_dtype),
            "wall_s": time.perf_counter() - t0, "results": results}
