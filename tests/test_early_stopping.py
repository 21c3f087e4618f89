"""Early stopping through train(cfg): the run ends when the monitored validation metric stops improving, says why
and where, keeps its checkpoints and metrics.json right, and a resumed run continues the patience count."""
import json
import logging

import pytest
import torch

from segdense.config.train_job import train
from segdense.engine import TrainSettings
from segdense.engine.early_stopping import EarlyStopping
from segdense.errors import ConfigError
from segdense.runtime import load_checkpoint

from train_utils import TINY, compose_config, free_port, spawn_within


class Crash(Exception):
    pass


def crash_at(n):
    def hook(trainer, iteration):
        if iteration == n:
            raise Crash(f"killed after iteration {n}")

    return hook


# min_delta 10 on the loss: only the first validation counts as an improvement, so with patience 3 and a
# validation every iteration the run stops at iteration 4 of 10.
STOPPING = TINY + ["iterations=10", "val_interval=1", "checkpoint_interval=2", "deterministic=true",
                   "early_stop.monitor=loss", "early_stop.patience=3", "early_stop.min_delta=10"]


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_a_run_stops_when_the_validation_loss_stops_improving_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segdense.train"):
        train(compose_config(STOPPING), run_dir=tmp_path)
    ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ended at iteration")]
    assert len(ended) == 1 and ended[0].startswith("ended at iteration 4 of 10: stopped early: validation loss")
    assert "in 3 validations; best" in ended[0] and "at iteration 1" in ended[0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iteration"] == 4 and metrics["stop_reason"] in ended[0]
    assert [h["iteration"] for h in metrics["history"]] == [1, 2, 3, 4]
    losses = [h["loss"] for h in metrics["history"]]
    assert all(0 < loss < 10 for loss in losses) and len(set(losses)) == 4  # the real validation loss
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert last["iteration"] == 4 and last["early_stop"]["bad_validations"] == 3
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")  # best.pt follows mIoU, as without early stopping
    assert best["iteration"] == metrics["best_iteration"]
    assert max(h["mIoU"] for h in metrics["history"]) == metrics["best_mIoU"]


def test_a_run_without_early_stopping_says_it_ran_every_iteration(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segdense.train"):
        train(compose_config(TINY), run_dir=tmp_path)
    assert "ended at iteration 4 of 4: all iterations done" in caplog.text


def test_a_patience_used_up_at_the_last_iteration_ends_the_run_normally(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segdense.train"):
        train(compose_config(STOPPING + ["iterations=4"]), run_dir=tmp_path)
    assert "ended at iteration 4 of 4: all iterations done" in caplog.text and "stopped early" not in caplog.text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iteration"] == 4 and metrics["stop_reason"] is None
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["early_stop"]["bad_validations"] == 3


def test_a_resumed_run_continues_the_patience_count(tmp_path):
    train(compose_config(STOPPING), run_dir=tmp_path / "a")
    with pytest.raises(Crash):
        train(compose_config(STOPPING), run_dir=tmp_path / "b", hooks=[crash_at(3)])
    assert load_checkpoint(tmp_path / "b/checkpoints/last.pt")["early_stop"]["bad_validations"] == 1
    train(compose_config(STOPPING + ["resume=auto"]), run_dir=tmp_path / "b")
    a, b = (load_checkpoint(tmp_path / run / "checkpoints/last.pt") for run in ("a", "b"))
    assert b["iteration"] == a["iteration"] == 4  # a count started afresh would stop at 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path):
    train(compose_config(STOPPING), run_dir=tmp_path)
    train(compose_config(STOPPING + ["resume=auto"]), run_dir=tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["iteration"] == 4


def test_a_monitor_that_validation_does_not_report_is_refused_naming_the_ones_it_does(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(compose_config(TINY + ["early_stop.monitor=val_loss"]), run_dir=tmp_path / "run")
    assert str(err.value) == ("early_stop.monitor='val_loss' is not a metric validation reports; choose one of "
                              "mIoU, mAcc, aAcc, loss (or null: no early stopping)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode, values, stops_after", [
    ("max", [0.5, 0.6, 0.6, 0.59], 4),    # 0.6 -> 0.6 and 0.59: two without improvement
    ("min", [1.0, 0.9, 0.95, 0.91], 4),
    ("max", [0.5, 0.6, 0.5, 0.7, 0.6], None),
])
def test_patience_counts_validations_in_a_row_without_improvement(mode, values, stops_after):
    class Run:
        iteration, stop_reason, device = 0, None, torch.device("cpu")
        settings = TrainSettings(iterations=10, batch_size=1)

    stopper, run = EarlyStopping(monitor="mIoU", mode=mode, patience=2), Run()
    for i, value in enumerate(values, 1):
        run.iteration = i
        stopper.on_validation(run, {"mIoU": value})
        if run.stop_reason:
            break
    assert (run.iteration if run.stop_reason else None) == stops_after


def _ddp_worker(rank, port, out):
    import os
    from datetime import timedelta

    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from segdense import build_model
    from segdense.data import SyntheticShapes
    from segdense.engine import Trainer, TrainSettings, build_optimizer, build_scheduler
    from segdense.losses import build_criterion

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        model = build_model("densenet_custom", {"name": "fcn", "channels": 16}, num_classes=5, output_stride=16,
                            num_units_per_block=[1, 1, 1, 1], growth_rate=8)
        optimizer = build_optimizer("sgd", model, 0.01, momentum=0.9)
        val = DataLoader(SyntheticShapes(split="val", num_samples=4, image_size=32), batch_size=2)
        # Rank 1 alone would go on for 100 validations: rank 0's decision is the one every process follows.
        stopper = EarlyStopping(monitor="loss", patience=[2, 100][rank], min_delta=10)
        settings = TrainSettings(iterations=10, batch_size=2, val_interval=1, device="cpu")
        trainer = Trainer(model, build_criterion([{"name": "cross_entropy"}], num_classes=5), optimizer,
                          build_scheduler("poly", optimizer, 10), SyntheticShapes(split="train", num_samples=8,
                                                                                  image_size=32),
                          val, settings, out, stop_signals=(), early_stop=stopper)
        trainer.fit()
        torch.save({"iteration": trainer.iteration, "loss": trainer.history[-1]["loss"]},
                   os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_process_stops_at_rank_0s_decision(tmp_path):
    spawn_within(_ddp_worker, (free_port(), str(tmp_path)), nprocs=2, seconds=180)
    ends = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [end["iteration"] for end in ends] == [3, 3]
    assert ends[0]["loss"] == ends[1]["loss"]  # the validation loss is reduced over both processes
