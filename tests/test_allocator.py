"""The tools' malloc tuning (segdense.allocator): what it leaves alone, and that a freed large tensor's memory is
reused instead of being faulted in again."""
import ctypes
import json
import logging
import os
import platform
import subprocess
import sys

import pytest

from segdense import allocator
from segdense.config.cli import run_tool

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 24 MiB tensor, then twelve 8 MiB tensors written and freed round after round, as a step's activations are.
# glibc's defaults mmap() the 24 MiB (threshold 128 KiB until frees raise it, to at most 32 MiB) and hand freed
# heap tops back to the kernel (above at most 64 MiB), so rounds of 96 MiB usually fault all 24,576 pages in
# again; tuned, both come from a heap that is kept and reused.
CHURN = """
import ctypes, json, resource, torch
from segdense.allocator import tune_malloc
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
said = tune_malloc()
mapped = libc.mallinfo2().hblkhd
big = torch.empty(24 << 20, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd - mapped
del big
def churn():
    tensors = [torch.empty(8 << 20, dtype=torch.uint8).fill_(1) for _ in range(12)]
    del tensors
for _ in range(3):
    churn()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    churn()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 3
print(json.dumps(dict(said=said, mmapped_mib=mapped >> 20, faults_per_round=faults)))
"""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in allocator._USER_SETTINGS and k not in (allocator.OPT_OUT, "LD_PRELOAD")}
    env.update(extra)
    return env


def _churn(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"), reason="glibc >= 2.33")
def test_tuning_keeps_freed_memory_instead_of_faulting_it_in_every_round():
    default = _churn(_clean_env(**{allocator.OPT_OUT: "0"}))
    tuned = _churn(_clean_env())
    assert default["said"] == f"malloc: left as is ({allocator.OPT_OUT}=0)"
    assert tuned["said"].startswith("malloc: mmap threshold 32 MiB, trim threshold 2 GiB")
    assert default["mmapped_mib"] == 24, default
    assert tuned["mmapped_mib"] == 0, tuned
    # How often glibc's defaults trim depends on the heap's layout (most runs: 24,544 faults per round); tuned, the
    # memory stays mapped and is reused.
    assert tuned["faults_per_round"] < 2_000, tuned


@pytest.mark.parametrize("env, reason", [
    ({allocator.OPT_OUT: "0"}, f"{allocator.OPT_OUT}=0"),
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "MALLOC_TRIM_THRESHOLD_ is set"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}, "GLIBC_TUNABLES is set"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc is preloaded"),
])
def test_user_settings_and_other_allocators_are_left_alone(monkeypatch, env, reason):
    for key in (*allocator._USER_SETTINGS, allocator.OPT_OUT, "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if not GLIBC:
        reason = "not glibc"
    assert allocator.tune_malloc() == f"malloc: left as is ({reason})"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_child_processes_inherit_the_tuning(monkeypatch):
    for key in (*allocator._USER_SETTINGS, allocator.OPT_OUT, "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    assert allocator.tune_malloc().startswith("malloc: mmap threshold")
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20)
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == str(2**31 - 1)
    # A tool started by this one (a benchmark memory row, a spawned worker) sees its own settings as tuned.
    assert allocator.tune_malloc().startswith("malloc: mmap threshold")


def test_tools_log_the_malloc_setting_at_debug_level_only(caplog):
    with caplog.at_level(logging.DEBUG, logger="segdense"):
        assert run_tool(lambda cfg: "done", None) == "done"
    malloc = [r for r in caplog.records if r.getMessage().startswith("malloc:")]
    assert len(malloc) == 1
    assert malloc[0].levelno == logging.DEBUG
