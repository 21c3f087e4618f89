"""The yardstick of the "% of peak" columns: the best FLOP/s of several GEMM-shaped products measured on the device,
and on a CPU in float32 the cores' theoretical FMA peak beside it. The peak is the higher of the two, so a network
whose kernels beat every measured product still reads below 100 %."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .measure import timed

# float32 lanes of one FMA instruction at each of torch's CPU capabilities.
FLOAT32_LANES = {"AVX512": 16, "AVX2": 8}
FMA_UNITS_PER_CORE = 2  # most x86 cores since Haswell / Zen 1; an assumption, printed with the figure
SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class Probe:
    """One product whose FLOP/s is measured: ``run`` does ``flops`` floating-point operations."""

    name: str
    flops: float
    run: Callable[[], object]


def _mm(m: int, k: int, n: int, device: str, dtype: torch.dtype) -> Probe:
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    return Probe(f"mm {m}x{k}x{n}", 2.0 * m * k * n, lambda: a @ b)


def _conv(channels: int, side: int, kernel: int, device: str, dtype: torch.dtype) -> Probe:
    """A channels-last convolution without padding (every counted tap is computed), batch 2."""
    x = torch.randn(2, channels, side, side, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, kernel, kernel, device=device, dtype=dtype)
    w = w.to(memory_format=torch.channels_last)
    out = side - kernel + 1
    flops = 2.0 * 2 * out * out * channels * channels * kernel * kernel

    def run():
        with torch.no_grad():
            return F.conv2d(x, w)
    return Probe(f"conv{kernel}x{kernel} {channels}ch {side}^2", flops, run)


def gemm_probes(device: str, dtype: torch.dtype, size: int) -> list[Probe]:
    """Square products of side ``size``, ``size/2`` and ``size/4``; tall-skinny ones (``4·size`` rows of
    ``size/4``, ``16·size`` rows of ``size/16``); and 1x1 and 3x3 convolutions (``size/8`` and ``size/16`` channels
    on ``size/64``-pixel squares), which run through the convolution library (oneDNN on CPU) rather than the BLAS."""
    side = lambda d: max(size // d, 1)
    return [_mm(side(1), side(1), side(1), device, dtype), _mm(side(2), side(2), side(2), device, dtype),
            _mm(side(4), side(4), side(4), device, dtype), _mm(4 * size, side(4), side(4), device, dtype),
            _mm(16 * size, side(16), side(16), device, dtype),
            _conv(side(8), max(size // 64, 1), 1, device, dtype),
            _conv(side(16), max(size // 64, 3), 3, device, dtype)]


def measured_peak(device: str, dtype: torch.dtype = torch.float32, size: int | None = None,
                  reps: int = 3) -> dict[str, float]:
    """Best FLOP/s of each of :func:`gemm_probes` (one warm-up run, then the fastest of ``reps``), by probe name.
    ``size`` defaults to 4096 on CPU and 8192 on CUDA: smaller products stay below the cores' rate."""
    size = size or (8192 if torch.device(device).type == "cuda" else 4096)
    best = {}
    for probe in gemm_probes(device, dtype, size):
        probe.run()
        best[probe.name] = probe.flops / min(timed(probe.run, device) for _ in range(reps))
    return best


def fma_peak(frequency_hz: float, cores: int, lanes: int, fma_units: int = FMA_UNITS_PER_CORE) -> float:
    """Theoretical FLOP/s: frequency x FMA units per core x vector lanes x 2 FLOPs per FMA x cores."""
    return frequency_hz * fma_units * lanes * 2 * cores


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.strip().split("\n\n"):
        fields = (line.split(":", 1) for line in chunk.splitlines() if ":" in line)
        blocks.append({k.strip(): v.strip() for k, v in fields})
    return blocks


def cpu_frequency(cpuinfo: str, sys_cpu: Path = SYS_CPU) -> tuple[float, str] | None:
    """The highest clock of this machine's CPUs in Hz and where it was read: cpufreq's ``cpuinfo_max_freq`` (the
    boost clock), else /proc/cpuinfo's ``cpu MHz`` (the current clock; in many VMs the base clock)."""
    khz = [int(p.read_text()) for p in sorted(sys_cpu.glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"))]
    if khz:
        return max(khz) * 1e3, "cpufreq cpuinfo_max_freq"
    mhz = [float(b["cpu MHz"]) for b in _cpuinfo_blocks(cpuinfo) if "cpu MHz" in b]
    return (max(mhz) * 1e6, "/proc/cpuinfo cpu MHz") if mhz else None


def physical_cores(cpuinfo: str, cpus: set[int]) -> int:
    """Cores behind the logical CPUs ``cpus`` (SMT siblings share one core's FMA units)."""
    blocks = [b for b in _cpuinfo_blocks(cpuinfo) if b.get("processor", "").isdigit() and int(b["processor"]) in cpus]
    if not blocks or any("core id" not in b for b in blocks):
        return len(cpus)
    return len({(b.get("physical id"), b["core id"]) for b in blocks})


def cpu_fma_peak(threads: int, capability: str, cpuinfo: str, cpus: set[int], sys_cpu: Path = SYS_CPU,
                 fma_units: int = FMA_UNITS_PER_CORE) -> dict | None:
    """The theoretical float32 FMA peak of the cores ``threads`` threads can use, with its inputs, or None when the
    capability's vector width or the clock is unknown."""
    lanes, frequency = FLOAT32_LANES.get(capability), cpu_frequency(cpuinfo, sys_cpu)
    if lanes is None or frequency is None:
        return None
    cores = min(threads, physical_cores(cpuinfo, cpus))
    return {"flops": fma_peak(frequency[0], cores, lanes, fma_units), "frequency_hz": frequency[0],
            "frequency_source": frequency[1], "fma_units": fma_units, "lanes": lanes, "capability": capability,
            "cores": cores}


def this_cpu_fma_peak() -> dict | None:
    """:func:`cpu_fma_peak` of this process: torch's threads and CPU capability, /proc/cpuinfo, its CPU affinity."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    return cpu_fma_peak(torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), cpuinfo, cpus)


def choose_peak(measured: dict[str, float], theoretical: dict | None) -> dict:
    """The peak of the "% of peak" columns: the higher of the best measured product and the theoretical peak."""
    shape = max(measured, key=measured.get)
    best = {"flops": measured[shape], "source": f"measured ({shape})"}
    if theoretical is not None and theoretical["flops"] > best["flops"]:
        best = {"flops": theoretical["flops"], "source": "theoretical FMA peak"}
    return {**best, "measured": measured, "theoretical": theoretical}
