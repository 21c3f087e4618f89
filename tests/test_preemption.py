"""SIGTERM / SIGUSR1 stop training after the step in progress, save ``last.pt`` there, and resume exactly."""
import logging
import os
import signal
import threading

import pytest
import torch

from segdense.config.cli import run_tool
from segdense.engine import Preempted, StopSignals
from segdense.engine import checkpoint as ckpt
from segdense.runtime import load_checkpoint

from train_utils import tiny_trainer

ITERATIONS = 5


def signal_during_step(trainer, step, *signums):
    """Send ``signums`` to this process from inside the forward pass of training step ``step`` (1-based)."""
    calls = {"n": 0}

    def send(module, inputs):
        calls["n"] += 1
        if calls["n"] == step:
            for signum in signums:
                os.kill(os.getpid(), signum)

    trainer.model.register_forward_pre_hook(send)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = tiny_trainer(tmp_path_factory.mktemp("uninterrupted"), ITERATIONS)
    trainer.fit()
    return trainer.model.state_dict()


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_saves_the_step_in_progress_and_the_resumed_run_is_bit_identical(
        tmp_path, uninterrupted, signum, exit_code):
    def previous(*args):
        raise AssertionError("the trainer's handler should have run, not the previous one")

    old = signal.signal(signum, previous)
    try:
        trainer = tiny_trainer(tmp_path, ITERATIONS)
        signal_during_step(trainer, 3, signum)
        with pytest.raises(Preempted) as stopped:
            trainer.fit()
        assert signal.getsignal(signum) is previous  # the program's own handler is back
    finally:
        signal.signal(signum, old)
    assert (stopped.value.signum, stopped.value.iteration, stopped.value.exit_code) == (signum, 3, exit_code)
    assert stopped.value.checkpoint == tmp_path / "checkpoints" / "last.pt"
    assert trainer.iteration == 3 and load_checkpoint(stopped.value.checkpoint)["iteration"] == 3
    resumed = tiny_trainer(tmp_path, ITERATIONS)
    resumed.resume_from(stopped.value.checkpoint)
    resumed.fit()
    weights = resumed.model.state_dict()
    assert weights.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(weights[key], value), key


def test_more_signals_while_saving_leave_a_loadable_checkpoint(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, ITERATIONS)
    signal_during_step(trainer, 2, signal.SIGUSR1)
    real_save = torch.save

    def save_while_signalled(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # mid-write: before the flush, fsync and rename
        os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(ckpt.torch, "save", save_while_signalled)
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    assert stopped.value.signal_name == "SIGUSR1" and stopped.value.iteration == 2  # the first signal counts
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["iteration"] == 2
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


def test_a_signal_during_the_last_step_lets_the_run_finish(tmp_path):
    trainer = tiny_trainer(tmp_path, 2)
    signal_during_step(trainer, 2, signal.SIGTERM)
    trainer.fit()  # nothing left to save for: no Preempted
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["iteration"] == 2


def test_the_tool_logs_how_to_resume_and_exits_with_128_plus_the_signal(tmp_path, caplog):
    def job(cfg):
        raise Preempted(signal.SIGTERM, 7, tmp_path / "checkpoints" / "last.pt")

    with caplog.at_level(logging.WARNING, logger="segdense"), pytest.raises(SystemExit) as exited:
        run_tool(job, None)
    assert exited.value.code == 143
    lines = [r.getMessage() for r in caplog.records if "stopped after iteration" in r.getMessage()]
    assert lines == [f"SIGTERM: stopped after iteration 7, state saved to {tmp_path}/checkpoints/last.pt; resume: "
                     f"rerun the same command with resume=auto hydra.run.dir={tmp_path} (exit status 143)"]


def test_stop_signals_outside_the_main_thread_install_nothing():
    seen = {}

    def watch():
        with StopSignals() as stop:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["received"] = stop.received()

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=watch)
    thread.start()
    thread.join(timeout=30)
    assert seen == {"handler": before, "received": 0}
