"""Run a command as if this CPU had AVX2 but no AVX-512 or VNNI: ``python tools/run_as_avx2.py COMMAND [ARGS ...]``.

Example: ``python tools/run_as_avx2.py python tools/export.py checkpoint=best.pt format=onnx quantize=int8``.

torch's own kernels can be limited with ``ATEN_CPU_CAPABILITY=avx2`` and oneDNN's with ``ONEDNN_MAX_CPU_ISA=AVX2``,
but ONNX Runtime (MLAS) picks its kernels from CPUID alone. This tool builds ``benchmarks/hide_avx512.c`` with the
system's C compiler (once, cached under ``~/.cache/segdense``) and runs the command with it preloaded: every CPUID
read in the command's processes then reports no AVX-512, VNNI, AVX-VNNI or AMX, so every library picks the kernels
it would pick on an AVX2-only CPU of the same speed. Needs Linux on x86-64 and a CPU whose CPUID instruction can be
made to fault (``cpuid_fault`` in /proc/cpuinfo: Intel since Ivy Bridge, AMD since Zen 4, most KVM guests).
It measures kernels, not a different CPU: clock, caches and memory stay this machine's (docs/benchmarks.md).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "benchmarks" / "hide_avx512.c"
USAGE = "usage: python tools/run_as_avx2.py COMMAND [ARGS ...]"


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
    library = cache / f"hide_avx512-{hashlib.sha256(source).hexdigest()[:16]}.so"
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


def main(argv: list[str]) -> int:
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
