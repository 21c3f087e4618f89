"""glibc malloc settings for CPU training and evaluation, applied by the command-line tools.

A training step frees and reallocates the same activation and gradient tensors every iteration.
glibc serves large allocations with fresh ``mmap`` calls (above a threshold it adapts only slowly)
and hands freed memory at the top of the heap back to the kernel (above the trim threshold), so
each step faults much of the same memory back in, one 4 KiB page at a time, with the kernel
zeroing every page. Measured on this project's 2-core AMD EPYC VM (AVX512, torch 2.14.1),
densenet121 at OS8, batch 2, 256^2: the plain training step took 92,000 page faults (377 MB) per
step with glibc's defaults and none with the settings below, and the README's demo ran in 46.8 s
instead of 54.4 s with the same mIoU and 1.5 % more peak RSS (docs/benchmarks.md).

:func:`tune_malloc` raises both thresholds once (``mallopt``), as PyTorch's CPU performance guide
achieves by preloading jemalloc or tcmalloc: the process then keeps its peak heap between steps
instead of returning it to the kernel. Importing segdense never changes the allocator; the tools
call this at start. ``SEGDENSE_MALLOC_TUNING=0`` keeps glibc's defaults, and so do ``MALLOC_*``
environment settings of the user's own or a preloaded allocator.
"""
from __future__ import annotations

import ctypes
import os
import platform

OPT_OUT = "SEGDENSE_MALLOC_TUNING"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2), and the largest int: allocations
# up to 32 MiB come from the heap and up to 2 GiB of freed heap top stays mapped.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _skip_reason() -> str | None:
    if os.environ.get(OPT_OUT, "1") == "0":
        return f"{OPT_OUT}=0"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") == str(MMAP_THRESHOLD) and \
            os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(TRIM_THRESHOLD):
        return None  # inherited from a tuned parent process: glibc read them at start
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if user:
        return f"{user[0]} is set"
    preload = os.environ.get("LD_PRELOAD", "")
    other = [name for name in _OTHER_ALLOCATORS if name in preload]
    if other:
        return f"{other[0]} is preloaded"
    return None


def tune_malloc() -> str:
    """Raise glibc's mmap and trim thresholds for this process and, through the environment, for
    the processes it starts. Returns what was done, one line for a log."""
    reason = _skip_reason()
    if reason is not None:
        return f"malloc: left as is ({reason})"
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "malloc: left as is (mallopt refused the thresholds)"
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(TRIM_THRESHOLD)
    return (f"malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold 2 GiB "
            f"(fewer page faults per step; {OPT_OUT}=0 keeps glibc's defaults)")
