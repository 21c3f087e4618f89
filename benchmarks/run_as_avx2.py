"""Run a command with AVX-512, VNNI and AMX hidden from CPUID: ``python -m benchmarks.run_as_avx2 COMMAND [ARGS ...]``.

A benchmarking aid: it gives the figures of the AVX2 kernels on an AVX-512 CPU. ``python tools/benchmark.py
--as-avx2 ...`` runs the benchmark under it; any other command works too, e.g.
``python -m benchmarks.run_as_avx2 python tools/export.py checkpoint=best.pt format=onnx quantize=int8``.

torch's own kernels can be limited with ``ATEN_CPU_CAPABILITY=avx2`` and oneDNN's with ``ONEDNN_MAX_CPU_ISA=AVX2``,
but ONNX Runtime (MLAS) picks its kernels from CPUID alone. This module builds ``benchmarks/hide_avx512.c`` with
the system's C compiler (once, cached under ``~/.cache/segdense``) and runs the command with it preloaded. From the
library's constructor on, every CPUID instruction in the command's processes (threads and forks inherit it, and
the environment preloads it again after an exec) reports no AVX-512, VNNI, AVX-VNNI, AVX10 or AMX. What is read
later sees an AVX2 CPU: Python imports torch (cpuinfo: ``torch.backends.cpu.get_cpu_capability()`` is AVX2,
oneDNN's ISA is AVX2), numpy and ONNX Runtime (MLAS) after that, so they pick their AVX2 kernels.

What it does not hide: CPU detection that runs before the preloaded constructor. The dynamic loader detects the
CPU first, and glibc keeps that result: ``<sys/platform/x86.h>`` still reports AVX512F active, the IFUNCs of
glibc's string and memory functions (memcpy, memset, strlen, ...) keep their AVX-512 (EVEX) versions, and so does
the loader's choice of glibc-hwcaps folders. Constructors of the libraries the program is linked against run
before a preloaded one's and see the real CPU too. XGETBV is not touched. Clock, caches and memory stay this
machine's: it measures kernels, not another CPU (docs/benchmarks.md).

Needs Linux on x86-64 and a CPU whose CPUID instruction can be made to fault (``cpuid_fault`` in /proc/cpuinfo:
Intel since Ivy Bridge, AMD since Zen 4, most KVM guests).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "hide_avx512.c"
USAGE = "usage: python -m benchmarks.run_as_avx2 COMMAND [ARGS ...]"
LIBRARY_PREFIX = "hide_avx512-"


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def unsupported_reason() -> str | None:
    """Why CPUID cannot be masked on this machine, or None when it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    if "cpuid_fault" not in cpu_flags():
        return "this CPU (or its hypervisor) cannot make CPUID fault: no 'cpuid_fault' flag in /proc/cpuinfo"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return f"no C compiler: {os.environ.get('CC', 'cc')} is not on PATH (set CC=...)"
    return None


def build_library(cache: Path | None = None) -> Path:
    """``hide_avx512.c`` compiled to a shared library, named by the source's hash so an edit rebuilds it."""
    source = SOURCE.read_bytes()
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segdense"
    library = cache / f"{LIBRARY_PREFIX}{hashlib.sha256(source).hexdigest()[:16]}.so"
    if library.is_file():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(f".{os.getpid()}.tmp")
    compiler = os.environ.get("CC", "cc")
    built = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE), "-ldl"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} could not build {SOURCE}:\n{built.stderr.strip()}")
    os.replace(partial, library)
    return library


def avx2_environment(library: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) with ``library`` first in LD_PRELOAD."""
    env = dict(os.environ if environ is None else environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    return env


def is_active(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started with the library preloaded (by this module)."""
    preload = (os.environ if environ is None else environ).get("LD_PRELOAD", "")
    return any(Path(p).name.startswith(LIBRARY_PREFIX) for p in preload.replace(":", " ").split())


def main(argv: list[str]) -> int:
    """Replace this process with ``argv`` run under the library; returns 2 (and says why) when it cannot."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1].strip(), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    reason = unsupported_reason()
    if reason is not None:
        print(f"error: cannot hide AVX-512 here: {reason}", file=sys.stderr)
        return 2
    try:
        library = build_library()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable cache folder
        print(f"error: cannot write the library to {e.filename}: {e.strerror} (set XDG_CACHE_HOME=DIR)", file=sys.stderr)
        return 2
    print(f"run_as_avx2: AVX-512, VNNI and AMX hidden from CPUID ({library.name})", file=sys.stderr)
    try:
        os.execvpe(argv[0], argv, avx2_environment(library))
    except OSError as e:
        print(f"error: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
