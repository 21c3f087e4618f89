"""The loss at every iteration in the run directory (loss_per_iteration.f32): one value per iteration, none twice
after a resume, and the training report's per-iteration loss curve."""
import numpy as np
import pytest
import torch

from segdense.config.train_job import train
from segdense.engine.loss_log import LOSS_LOG, open_loss_log, read_loss_log
from segdense.reports.plots import ema
from segdense.reports.training import write_training_report

from train_utils import TINY, compose_config

RUN = TINY + ["iterations=4", "checkpoint_interval=2", "val_interval=4", "deterministic=true"]


class Crash(Exception):
    """Stands for the process dying after an iteration."""


def crash_after(n):
    def hook(trainer, iteration):
        if iteration == n:
            raise Crash(f"killed after iteration {n}")

    return hook


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir, seen = tmp_path_factory.mktemp("uninterrupted"), {}
    train(compose_config(RUN), run_dir=run_dir, hooks=[lambda trainer, it: seen.setdefault("trainer", trainer)])
    yield run_dir, seen["trainer"].loss_history
    torch.use_deterministic_algorithms(False)


def test_a_run_logs_one_loss_per_iteration(uninterrupted):
    run_dir, losses = uninterrupted
    logged = read_loss_log(run_dir)
    assert (run_dir / LOSS_LOG).stat().st_size == 4 * 4
    assert logged.tolist() == pytest.approx(losses, rel=1e-6) and len(losses) == 4


def test_a_resumed_run_logs_no_iteration_twice(uninterrupted, tmp_path):
    with pytest.raises(Crash):
        train(compose_config(RUN), run_dir=tmp_path, hooks=[crash_after(3)])  # last checkpoint: iteration 2
    assert len(read_loss_log(tmp_path)) == 3
    train(compose_config(RUN + ["resume=auto"]), run_dir=tmp_path)
    assert read_loss_log(tmp_path).tolist() == read_loss_log(uninterrupted[0]).tolist()


def test_resuming_into_another_run_directory_leaves_the_earlier_iterations_unknown(tmp_path):
    with open_loss_log(tmp_path, iteration=3) as log:
        log.write(np.float32(0.5).tobytes())
    assert np.isnan(read_loss_log(tmp_path)[:3]).all() and read_loss_log(tmp_path)[3] == 0.5
    with open_loss_log(tmp_path, iteration=1) as log:  # a checkpoint of iteration 1: later records are cut off
        pass
    assert len(read_loss_log(tmp_path)) == 1


def test_the_smoothed_loss_is_a_bias_corrected_ema_that_skips_missing_steps():
    smoothed = ema([1.0, float("nan"), 3.0], span=3)  # alpha 0.5
    assert smoothed[0] == 1.0 and np.isnan(smoothed[1])
    assert smoothed[2] == pytest.approx((0.25 * 1.0 + 0.5 * 3.0) / 0.75)


def test_the_report_draws_the_per_iteration_loss(uninterrupted):
    page = write_training_report(uninterrupted[0]).read_text()
    assert 'src="report/loss.png"' in page and (uninterrupted[0] / "report" / "loss.png").stat().st_size > 1000
