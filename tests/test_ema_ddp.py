"""Weight EMA under DDP: the average is kept of the unwrapped module, both processes hold the same one, it equals one
process's average on the same global batch (float64, frozen BatchNorm), and a resumed DDP run restores it."""
import os
from datetime import timedelta

import pytest
import torch

from segdense.engine import Trainer, TrainSettings, build_optimizer, build_scheduler
from segdense.engine.ema import WeightEMA
from segdense.losses import build_criterion

from test_accumulation import EveryPixelLabelled, FrozenFloat64
from train_utils import free_port, spawn_within

STEPS = 4


class Crash(Exception):
    pass


def crash_at_2(trainer, iteration):
    if iteration == 2:
        raise Crash


def trainer_for(run_dir, batch_size, hooks=()):
    model = FrozenFloat64()
    model.model_config = model.inner.model_config  # what resume checks the checkpoint against
    optimizer = build_optimizer("sgd", model.inner, 0.05, momentum=0.9)
    settings = TrainSettings(iterations=STEPS, batch_size=batch_size, device="cpu", log_interval=1,
                             checkpoint_interval=2)
    return Trainer(model, build_criterion([{"name": "cross_entropy"}], num_classes=5), optimizer,
                   build_scheduler("poly", optimizer, STEPS), EveryPixelLabelled(), None, settings, run_dir,
                   hooks=hooks, stop_signals=(), ema=WeightEMA(decay=0.5))


def average(trainer):
    return {key: value.clone() for key, value in trainer.ema.module.state_dict().items()}


def _ddp_worker(rank, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        whole = trainer_for(os.path.join(out, "whole"), batch_size=2)
        assert whole.ddp is not None
        whole.fit()
        interrupted = trainer_for(os.path.join(out, "resumed"), batch_size=2, hooks=[crash_at_2])
        try:
            interrupted.fit()
        except Crash:
            pass
        dist.barrier()  # rank 0 has written last.pt at iteration 2
        resumed = trainer_for(os.path.join(out, "resumed"), batch_size=2)
        resumed.resume_from(os.path.join(out, "resumed", "checkpoints", "last.pt"))
        resumed.fit()
        torch.save({"whole": average(whole), "resumed": average(resumed)}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_hold_one_average_equal_to_one_process_and_resume_restores_it(tmp_path):
    spawn_within(_ddp_worker, (free_port(), str(tmp_path)), nprocs=2, seconds=240)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    single = trainer_for(tmp_path / "single", batch_size=4)
    start = average(single)
    single.fit()
    expected = average(single)
    assert set(ranks[0]["whole"]) == set(expected)  # the unwrapped module's keys, no "module." prefix
    assert max(float((expected[k] - start[k]).abs().max()) for k in expected) > 1e-3  # the average moved
    for key, value in expected.items():
        for rank in ranks:
            assert torch.equal(rank["whole"][key], ranks[0]["whole"][key]), key
            assert torch.equal(rank["resumed"][key], ranks[0]["whole"][key]), key
        if value.is_floating_point():
            assert float((ranks[0]["whole"][key] - value).abs().max()) < 1e-10, key
        else:
            assert torch.equal(ranks[0]["whole"][key], value), key
