"""tools/run_as_avx2.py: CPUID reads in the command report no AVX-512 (the libraries then pick their AVX2 kernels),
every other feature stays as the CPU reports it, and a real crash still crashes."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_as_avx2", ROOT / "tools" / "run_as_avx2.py")
run_as_avx2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_as_avx2)

REASON = run_as_avx2.unsupported_reason()
needs_cpuid_faulting = pytest.mark.skipif(REASON is not None, reason=f"CPUID cannot be masked here: {REASON}")
NUMPY_FEATURES = ("import json; from numpy._core._multiarray_umath import __cpu_features__ as f; "
                  "print(json.dumps(f))")


def run(*command, avx2=True, **kwargs):
    prefix = [sys.executable, str(ROOT / "tools" / "run_as_avx2.py")] if avx2 else []
    return subprocess.run(prefix + list(command), capture_output=True, text=True, timeout=120, **kwargs)


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
def test_torch_picks_its_avx2_kernels():
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    masked = run(sys.executable, "-c", code, env=env)  # without the suite's own AVX2 emulation
    assert masked.returncode == 0, masked.stderr
    assert masked.stdout.strip() == ("AVX2" if "avx2" in run_as_avx2.cpu_flags() else "DEFAULT")


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
    assert capsys.readouterr().err.startswith("usage: python tools/run_as_avx2.py COMMAND [ARGS ...]")


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
