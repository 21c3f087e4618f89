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
import torch.nn as nn

from segdense.engine import comparison

from .config import Row, Settings
from .int8 import measure_int8
from .measure import SPIN_PAUSE_S, count_flops, cpu_peak_bytes, cuda_peak_bytes, infer, sync, timed, train_step
from .models import build, make_inference_input, make_input
from .peak import choose_peak, measured_peak, this_cpu_fma_peak


@dataclass
class Result:
    row: Row
    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    onnx_s: list[float] = field(default_factory=list)
    onnx_eager_s: list[float] = field(default_factory=list)  # eager, alternating with onnx_s
    int8_s: list[float] = field(default_factory=list)  # the INT8 export, alternating with onnx_s (Settings.int8)
    peak_bytes: int | None = None
    # Inference peak memory (Settings.int8): eager, float32 ONNX, INT8 ONNX
    infer_peak_bytes: int | None = None
    onnx_peak_bytes: int | None = None
    int8_peak_bytes: int | None = None
    int8_info: dict | None = None  # how the INT8 file was made (benchmarks.int8)
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
    """What the timings depend on (:func:`segdense.engine.comparison.machine_info`), with the platform, the
    oneDNN primitive cache and glibc's malloc thresholds the run used (``segdense.allocator``)."""
    info = dict(comparison.machine_info(), platform=platform.platform(), load_average=os.getloadavg(),
                ld_preload=os.environ.get("LD_PRELOAD") or None,
                onednn_primitive_cache_capacity=os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024"),
                malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
                malloc_trim_threshold=os.environ.get("MALLOC_TRIM_THRESHOLD_", "glibc default"))
    if torch.device(device).type != "cuda":
        info["gpu"] = None  # not used by this run
    return info


def _safe(result: Result, fn: Callable[[], None], log) -> None:
    if result.error is not None:
        return
    try:
        fn()
    except Exception as e:  # one row failing must not lose the others' numbers
        result.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        log(f"  ! {result.row.label()}: {result.error}")


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
        time.sleep(SPIN_PAUSE_S)
        t = time.perf_counter()
        sess.run(None, feed)
        ort_s.append(time.perf_counter() - t)
        time.sleep(SPIN_PAUSE_S)
        eager_s.append(timed(lambda: infer(row, model, x), row.device))
    model.train()
    return ort_s, eager_s


def check_device(rows: list[Row]) -> str:
    """The one device every row runs on (cuDNN autotuning on for CUDA, whose shapes are fixed as in training)."""
    device = rows[0].device
    if any(r.device != device for r in rows):
        raise ValueError("all rows of one run must use the same device")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in training; warm-up autotunes
    return device


class Session:
    """The rows of one run with their built models and inputs; each phase measures every row still alive (a row
    that fails keeps its error and drops out, the others go on)."""

    def __init__(self, rows: list[Row], settings: Settings, log: Callable[[str], None]) -> None:
        self.settings, self.log = settings, log
        self.device = check_device(rows)
        self.results = [Result(r) for r in rows]
        self.models: dict[int, nn.Module] = {}
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.infer_inputs: dict[int, torch.Tensor] = {}
        for res in self.results:
            self.guard(res, lambda res=res: self._build(res))

    def _build(self, res: Result) -> None:
        torch.manual_seed(0)
        model = build(res.row)
        self.inputs[id(res)] = make_input(res.row)
        self.infer_inputs[id(res)] = make_inference_input(res.row)
        self.models[id(res)] = torch.compile(model) if res.row.compile else model

    def guard(self, result: Result, fn: Callable[[], None]) -> None:
        _safe(result, fn, self.log)

    def live(self) -> list[Result]:
        return [r for r in self.results if r.error is None]

    def warm_up(self) -> None:
        self.log("warm-up ...")
        for i in range(self.settings.warmup):
            for res in self.live():
                model, (x, y), xi = self.models[id(res)], self.inputs[id(res)], self.infer_inputs[id(res)]
                start = time.perf_counter()
                self.guard(res, lambda: train_step(res.row, model, x, y))
                self.guard(res, lambda: (model.eval(), infer(res.row, model, xi), model.train()))
                if i == 0 and res.error is None:
                    sync(self.device)
                    res.first_step_s = time.perf_counter() - start
                    if res.row.compile:
                        self.log(f"  compiled {res.row.label()}: first training step + inference "
                                 f"{res.first_step_s:.1f} s")

    def time_steps(self) -> None:
        """Interleaved repetitions: every row's training step, then (in eval mode) every row's inference."""
        self.log(f"timing {self.settings.reps} interleaved repetitions of {len(self.live())} rows ...")
        for train in (True, False):
            for res in self.live():
                self.models[id(res)].train(train)
            for _ in range(self.settings.reps):
                for res in self.live():
                    model, (x, y), xi = self.models[id(res)], self.inputs[id(res)], self.infer_inputs[id(res)]
                    step = (lambda: train_step(res.row, model, x, y)) if train else (lambda: infer(res.row, model, xi))
                    times = res.train_s if train else res.infer_s
                    self.guard(res, lambda: times.append(timed(step, self.device)))
        for res in self.live():
            self.models[id(res)].train()

    def time_onnx(self) -> None:
        """ONNX Runtime beside eager, for segdense's plain eager backbone rows (CPU)."""
        if self.settings.int8:
            return self.time_int8()
        for res in self.live():
            r = res.row
            if r.impl == "segdense" and not r.memory_efficient and r.head is None and not r.compile:
                self.log(f"ONNX Runtime: {r.label()}")
                self.guard(res, lambda res=res: self._onnx(res))

    def time_int8(self) -> None:
        """Every eager row's float32 ONNX export and its INT8 twin, alternating, with their peak memory (CPU)."""
        for res in self.live():
            if not res.row.compile:
                self.log(f"float32 and INT8 ONNX: {res.row.label()}")
                self.guard(res, lambda res=res: self._int8(res))

    def _int8(self, res: Result) -> None:
        m = measure_int8(res.row, self.models[id(res)], self.infer_inputs[id(res)], self.settings, self.log)
        res.onnx_s, res.int8_s, res.int8_info = m["onnx_s"], m["int8_s"], m["info"]
        res.onnx_peak_bytes, res.int8_peak_bytes = m["onnx_peak_bytes"], m["int8_peak_bytes"]

    def _onnx(self, res: Result) -> None:
        ort_s, eager_s = _onnx_times(res.row, self.models[id(res)], self.infer_inputs[id(res)], self.settings.reps)
        res.onnx_s.extend(ort_s)
        res.onnx_eager_s.extend(eager_s)

    def count_flops(self) -> None:
        """FLOPs per implementation and architecture: segdense's transitions pool before their 1x1 conv, so it
        does fewer FLOPs than torchvision's DenseNet of the same architecture."""
        counted: dict[tuple, tuple[float, float]] = {}
        for res in self.live():
            key = (res.row.group_key(), res.row.impl)
            if key not in counted:
                plain = dataclasses.replace(res.row, memory_efficient=False, compile=False, cuda_graphs=False)
                self.guard(res, lambda plain=plain, key=key: counted.__setitem__(key, _flops(plain)))
            if key in counted:
                res.flops_infer, res.flops_train = counted[key]

    def measure_memory(self) -> None:
        """Peak training memory: CUDA's allocator peak, or on CPU a fresh process's resident-set peak."""
        only = self.settings.memory_output_strides
        for res in self.live():
            if only and res.row.output_stride not in only:
                continue
            self.log(f"peak memory: {res.row.label()}")
            if torch.device(self.device).type == "cuda":
                model, (x, y) = self.models[id(res)], self.inputs[id(res)]
                self.guard(res, lambda: setattr(res, "peak_bytes", cuda_peak_bytes(res.row, model, x, y)))
            else:
                self.guard(res, lambda: setattr(res, "peak_bytes", cpu_peak_bytes(res.row)))
                if self.settings.int8:  # the exports' peaks were measured beside their timings
                    self.guard(res, lambda: setattr(res, "infer_peak_bytes", cpu_peak_bytes(res.row, "infer")))


def _flops(row: Row) -> tuple[float, float]:
    torch.manual_seed(0)
    x, y = make_input(row)
    return count_flops(row, build(row), x, y, make_inference_input(row))


def run(rows: list[Row], settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Measure every row; rows' repetitions are interleaved so load changes hit all alike."""
    t0, load_start = time.perf_counter(), os.getloadavg()
    # oneDNN (CPU convolutions) caches 1024 compiled primitives by default. Interleaving many
    # rows (shapes x memory formats x passes) overflows it, and every call then recompiles its
    # kernels: measured 1.6-3x slower rows, worst for those with the most distinct primitives.
    # Read when the first primitive is made, so it takes effect if nothing ran a conv before.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
    device = check_device(rows)
    amp = next((r.amp for r in rows if r.amp), None)
    peak_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    measured = measured_peak(device, peak_dtype, settings.matmul_size)
    log(f"GEMM peak ({peak_dtype}): {max(measured.values()) / 1e9:.1f} GFLOP/s")
    session = Session(rows, settings, log)
    session.warm_up()
    session.time_steps()
    if (settings.onnx or settings.int8) and torch.device(device).type == "cpu":
        session.time_onnx()
    if settings.measure_flops:
        session.count_flops()
    if settings.measure_memory:
        session.measure_memory()
    # Each product's best of a measurement before and after the rows, so a busy moment at the start cannot
    # understate the peak (and inflate every FLOP/s fraction).
    again = measured_peak(device, peak_dtype, settings.matmul_size)
    measured = {name: max(flops, again[name]) for name, flops in measured.items()}
    cpu_fp32 = torch.device(device).type == "cpu" and peak_dtype == torch.float32
    peak = choose_peak(measured, this_cpu_fma_peak() if cpu_fp32 else None)
    log(f"peak, best of start and end: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak['source']})")
    return {"machine": machine_info(device), "settings": dataclasses.asdict(settings),
            "peak_flops": peak["flops"], "peak": {**peak, "dtype": str(peak_dtype)},
            "wall_s": time.perf_counter() - t0, "load_average_start": load_start, "results": session.results}
