"""benchmarks/run_as_avx2.py: CPUID reads in the command report no AVX-512 (the libraries then pick their AVX2
kernels), every other feature stays as the CPU reports it, and a real crash still crashes. What was detected before
the preloaded library's constructor ran (glibc's view, a linked library's constructor) keeps the real CPU."""
import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run_as_avx2

ROOT = Path(__file__).resolve().parent.parent
# python -m benchmarks.run_as_avx2 finds this checkout's benchmarks/, also before a reinstall has registered it.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

REASON = run_as_avx2.unsupported_reason()
needs_cpuid_faulting = pytest.mark.skipif(REASON is not None, reason=f"CPUID cannot be masked here: {REASON}")
NUMPY_FEATURES = ("import json; from numpy._core._multiarray_umath import __cpu_features__ as f; "
                  "print(json.dumps(f))")


def run(*command, avx2=True, env=None, **kwargs):
    prefix = [sys.executable, "-m", "benchmarks.run_as_avx2"] if avx2 else []
    return subprocess.run(prefix + list(command), capture_output=True, text=True, timeout=120,
                          env={**ENV, **(env or {})}, **kwargs)


@needs_cpuid_faulting
def test_avx512_is_hidden_and_every_other_feature_kept():
    native = json.loads(run(sys.executable, "-c", NUMPY_FEATURES, avx2=False).stdout)
    masked = run(sys.executable, "-c", NUMPY_FEATURES)
    assert masked.returncode == 0, masked.stderr
    masked_features = json.loads(masked.stdout)
    assert "AVX-512, VNNI and AMX hidden from CPUID" in masked.stderr
    assert native["AVX2"] == ("avx2" in run_as_avx2.cpu_flags())  # numpy reads CPUID like every library
    assert native["AVX512F"] == ("avx512f" in run_as_avx2.cpu_flags())
    for name, present in native.items():
        expected = False if name.startswith("AVX512") or name == "X86_V4" else present  # V4: AVX-512 level
        assert masked_features[name] == expected, name


@needs_cpuid_faulting
def test_torch_and_onednn_pick_their_avx2_kernels():
    code = ("import torch; print(torch.backends.cpu.get_cpu_capability(), flush=True); "
            "x = torch.randn(2, 64, 32, 32).to(memory_format=torch.channels_last); "
            "torch.nn.functional.conv2d(x, torch.randn(64, 64, 3, 3), padding=1)")
    env = {k: v for k, v in ENV.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    masked = subprocess.run([sys.executable, "-m", "benchmarks.run_as_avx2", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=120, env={**env, "ONEDNN_VERBOSE": "1"})
    assert masked.returncode == 0, masked.stderr  # without any AVX2 emulation but the tool's
    lines = masked.stdout.splitlines()
    avx2 = "avx2" in run_as_avx2.cpu_flags()
    assert lines[0] == ("AVX2" if avx2 else "DEFAULT")
    onednn_isa = next(line.split(",isa:", 1)[1] for line in lines if ",isa:" in line)
    assert onednn_isa == "Intel AVX2" if avx2 else "AVX-512" not in onednn_isa


GLIBC_AND_NUMPY = ("import ctypes, json; leaf = ctypes.CDLL(None).__x86_get_cpuid_feature_leaf; "
                   "leaf.restype = ctypes.POINTER(ctypes.c_uint * 8); leaf7 = leaf(1).contents; "
                   "from numpy._core._multiarray_umath import __cpu_features__ as f; "
                   "print(json.dumps([bool(leaf7[5] >> 16 & 1), f['AVX512F']]))")


@needs_cpuid_faulting
@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "__x86_get_cpuid_feature_leaf"),
                    reason="glibc before 2.33 has no <sys/platform/x86.h>")
def test_glibc_keeps_what_the_loader_detected_before_the_preload():
    # The dynamic loader reads CPUID before any preloaded code runs; glibc's IFUNCs (memcpy, strlen, ...) are chosen
    # from what it read. numpy, imported later in the same process, sees the hidden flags.
    avx512f = "avx512f" in run_as_avx2.cpu_flags()
    masked = run(sys.executable, "-c", GLIBC_AND_NUMPY)
    assert masked.returncode == 0, masked.stderr
    assert json.loads(masked.stdout) == [avx512f, False]


LINKED_LIBRARY = r"""
#include <cpuid.h>
#include <stdio.h>
int avx512f(void) { unsigned a, b, c, d; __cpuid_count(7, 0, a, b, c, d); return (b >> 16) & 1; }
__attribute__((constructor)) static void init(void) { printf("constructor %d\n", avx512f()); fflush(stdout); }
"""


@needs_cpuid_faulting
def test_a_linked_librarys_constructor_runs_before_the_preload_and_sees_the_real_cpu(tmp_path):
    (tmp_path / "early.c").write_text(LINKED_LIBRARY)
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint avx512f(void);\n'
                                     'int main(void) { printf("main %d\\n", avx512f()); return 0; }\n')
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libearly.so"), str(tmp_path / "early.c")], check=True)
    subprocess.run([cc, "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), f"-L{tmp_path}", "-learly",
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    avx512f = int("avx512f" in run_as_avx2.cpu_flags())
    assert run(str(tmp_path / "main")).stdout.split("\n")[:2] == [f"constructor {avx512f}", "main 0"]


def test_is_active_only_with_the_library_preloaded():
    assert run_as_avx2.is_active({"LD_PRELOAD": "/x/libjemalloc.so /c/segdense/hide_avx512-0123456789abcdef.so"})
    assert not run_as_avx2.is_active({"LD_PRELOAD": "/x/libjemalloc.so"}) and not run_as_avx2.is_active({})


@needs_cpuid_faulting
@pytest.mark.parametrize("faulthandler", [False, True], ids=["plain", "faulthandler"])
def test_a_real_segmentation_fault_still_kills_the_process(faulthandler):
    # Python's faulthandler installs its own SIGSEGV handler: it must neither replace the CPUID handler (the
    # import of numpy after it reads CPUID) nor lose the crash.
    flags = ["-X", "faulthandler"] if faulthandler else []
    code = "import numpy, ctypes; print('numpy imported', flush=True); ctypes.string_at(0)"
    crashed = run(sys.executable, *flags, "-c", code)
    assert crashed.stdout.strip() == "numpy imported"
    assert crashed.returncode == -signal.SIGSEGV
    assert ("Fatal Python error: Segmentation fault" in crashed.stderr) == faulthandler


def test_a_machine_that_cannot_mask_is_one_error(monkeypatch, capsys):
    monkeypatch.setattr(run_as_avx2, "cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(run_as_avx2.platform, "system", lambda: "Linux")
    monkeypatch.setattr(run_as_avx2.platform, "machine", lambda: "x86_64")
    assert run_as_avx2.main(["true"]) == 2
    assert capsys.readouterr().err == ("error: cannot hide AVX-512 here: this CPU (or its hypervisor) cannot make "
                                       "CPUID fault: no 'cpuid_fault' flag in /proc/cpuinfo\n")


def test_no_command_prints_the_usage(capsys):
    assert run_as_avx2.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m benchmarks.run_as_avx2 COMMAND [ARGS ...]")


def test_a_compiler_error_is_one_error_and_leaves_no_library(tmp_path, monkeypatch):
    monkeypatch.setattr(run_as_avx2, "SOURCE", tmp_path / "broken.c")
    (tmp_path / "broken.c").write_text("this is not C\n")
    if run_as_avx2.shutil.which("cc") is None:
        pytest.skip("no C compiler")
    with pytest.raises(RuntimeError, match="could not build .*broken.c"):
        run_as_avx2.build_library(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@needs_cpuid_faulting
def test_an_unwritable_cache_is_one_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a user's file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert run_as_avx2.main(["true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the library to {blocker}") and err.count("\n") == 1
    assert blocker.read_text() == "a user's file"
