"""Stopping a run cleanly when the scheduler asks: SIGTERM (preemption, a time limit, ``scancel``) and SIGUSR1
(what SLURM's ``--signal=USR1@90`` sends ahead of the time limit).

The handler only records the signal, so it cannot re-enter and a second signal while the checkpoint is being
written changes nothing. The trainer asks :meth:`StopSignals.received` after every step; under several processes
the answer is all-reduced (a signal may reach only some ranks), so every rank stops after the same iteration.
"""
from __future__ import annotations

import signal
import threading
from typing import Sequence

import torch
import torch.distributed as dist

# SIGUSR1 does not exist on Windows.
DEFAULT_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


def preempted_exit_code(signum: int) -> int:
    """128 + the signal's number (143 after SIGTERM, 138 after SIGUSR1): the status a shell, SLURM's ``sacct``
    and torchrun report for a process that signal ended, so schedulers and scripts see an interrupted job."""
    return 128 + signum


class Preempted(Exception):
    """Training stopped on a signal after ``iteration`` and saved its state to ``checkpoint``; rerun with
    ``resume=auto`` (or ``Trainer.resume_from(checkpoint)``) to continue exactly where it stopped."""

    def __init__(self, signum: int, iteration: int, checkpoint) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        self.signal_name = signal.Signals(signum).name
        self.exit_code = preempted_exit_code(signum)
        super().__init__(f"stopped by {self.signal_name} after iteration {iteration}; state saved to {checkpoint}")


class StopSignals:
    """A context manager: inside it ``signals`` set a flag instead of their previous action; on leaving, the
    previous handlers come back. Outside the main thread (where Python cannot install handlers) it does nothing
    but still takes part in the all-reduce, so ranks stay in step."""

    def __init__(self, signals: Sequence[int] = DEFAULT_STOP_SIGNALS, device: torch.device | None = None) -> None:
        self.signals = tuple(signals)
        self.device = device or torch.device("cpu")
        self.signum = 0  # the first stop signal received here; 0: none
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self.previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _record(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def received(self) -> int:
        """The stop signal any process received (the largest number when they differ), or 0. Collective: under
        a process group every rank must call it at the same point (with no signals to watch: no collective)."""
        if not self.signals:
            return 0
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
