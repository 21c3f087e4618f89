"""Gradient accumulation through the real Trainer: ``accumulate=k`` micro-batches of B give the weights one batch of
B*k gives (float64, frozen BatchNorm, labels without ignored pixels: equal up to summation order), in one process
and under DDP, where the gradients are all-reduced once per optimizer step."""
import os
from datetime import timedelta

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from segdense import build_model
from segdense.data import SyntheticShapes
from segdense.engine import Trainer, TrainSettings, build_optimizer, build_scheduler
from segdense.errors import ConfigError
from segdense.losses import build_criterion

from train_utils import free_port, spawn_within

STEPS = 3


class FrozenFloat64(nn.Module):
    """A tiny DenseNet + FCN in float64 whose BatchNorms (running statistics) and dropout stay in eval mode while
    training: its output for an image does not depend on the other images of the batch, nor on the RNG, which each
    DDP process draws from on its own."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = build_model("densenet_custom", {"name": "fcn", "channels": 16}, num_classes=5,
                                 output_stride=16, num_units_per_block=[1, 1, 1, 1], growth_rate=8).double()
        self.train()

    def forward(self, images):
        return self.inner(images.double())

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
                module.eval()
        return self


class EveryPixelLabelled(Dataset):
    """Synthetic shapes with the ignored pixels labelled background: every micro-batch's mean loss then has the
    same weight in the step's mean (with ignored pixels, each micro-batch is its own mean)."""

    def __init__(self) -> None:
        self.data = SyntheticShapes(split="train", num_samples=8, image_size=32)
        self.transform = self.data.transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        image, mask = self.data[index][:2]
        return image, torch.where(mask == 255, torch.zeros_like(mask), mask)


def run(run_dir, batch_size, accumulate, steps=STEPS):
    """The weights after ``steps`` optimizer steps of SGD (momentum, weight decay) on a poly schedule."""
    model = FrozenFloat64()
    optimizer = build_optimizer("sgd", model.inner, 0.05, momentum=0.9, weight_decay=1e-3)
    settings = TrainSettings(iterations=steps, batch_size=batch_size, accumulate=accumulate, device="cpu",
                             log_interval=1)
    trainer = Trainer(model, build_criterion([{"name": "cross_entropy"}], num_classes=5), optimizer,
                      build_scheduler("poly", optimizer, steps), EveryPixelLabelled(), None, settings, run_dir,
                      stop_signals=())
    trainer.fit()
    return {name: p.detach().clone() for name, p in model.named_parameters()}, trainer


def largest_difference(a, b):
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def test_accumulated_micro_batches_give_the_weights_of_one_large_batch(tmp_path):
    start = {name: p.detach().clone() for name, p in FrozenFloat64().named_parameters()}
    whole, whole_trainer = run(tmp_path / "whole", batch_size=4, accumulate=1)
    accumulated, trainer = run(tmp_path / "accumulated", batch_size=2, accumulate=2)
    assert largest_difference(whole, start) > 1e-3  # the weights moved
    assert largest_difference(whole, accumulated) < 1e-10
    assert trainer.iteration == STEPS  # iterations count optimizer steps
    assert trainer.optimizer.param_groups[0]["lr"] == whole_trainer.optimizer.param_groups[0]["lr"]
    assert trainer.loss_history == pytest.approx(whole_trainer.loss_history, rel=1e-10)


def test_accumulate_below_one_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="accumulate must be positive, got 0"):
        TrainSettings(iterations=1, batch_size=2, accumulate=0)


def _ddp_worker(rank, port, out, no_sync_calls):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    real_no_sync = nn.parallel.DistributedDataParallel.no_sync
    calls = []

    def counting_no_sync(self):
        calls.append(1)
        return real_no_sync(self)

    nn.parallel.DistributedDataParallel.no_sync = counting_no_sync
    try:
        weights, _ = run(os.path.join(out, "ddp"), batch_size=1, accumulate=2)
        if rank == 0:
            torch.save(weights, os.path.join(out, "ddp.pt"))
            torch.save(len(calls), no_sync_calls)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_accumulation_syncs_only_the_last_micro_batch_and_equals_one_process(tmp_path):
    calls = tmp_path / "no_sync_calls.pt"
    spawn_within(_ddp_worker, (free_port(), str(tmp_path), str(calls)), nprocs=2, seconds=240)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single, _ = run(tmp_path / "single", batch_size=4, accumulate=1)
    assert torch.load(calls, weights_only=True) == STEPS  # one micro-batch of two per step without the all-reduce
    assert largest_difference(ddp, single) < 1e-10
