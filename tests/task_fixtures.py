"""Tiny binary and multilabel checkpoints (trained a few steps on synthetic data, once per session) and stand-in
models with known logits, for the prediction, evaluation and export tests of those tasks."""
import pytest
import torch
import torch.nn as nn

from train_utils import TINY, compose_config

TASK_RUNS = {
    "binary": ["dataset=synthetic_binary", "task=binary", "task.threshold=0.4", "loss=bce_dice"],
    "multilabel": ["dataset=synthetic_multilabel", "task=multilabel", "loss=bce_dice"],
}
SHORT = ["iterations=4", "val_interval=4", "checkpoint_interval=4", "dataset.num_samples=8", "dataset.image_size=48",
         "crop_size=[48,48]"]


def task_checkpoint(tmp_path_factory, name: str):
    from segdense.config.train_job import train

    run_dir = tmp_path_factory.getbasetemp() / f"tiny_{name}_run"
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        overrides = [o for o in TINY if not o.startswith(("dataset.image_size", "crop_size"))]
        train(compose_config(overrides + SHORT + TASK_RUNS[name]), run_dir=run_dir)
        torch.use_deterministic_algorithms(False)
    return checkpoint


@pytest.fixture(scope="session")
def binary_checkpoint(tmp_path_factory):
    return task_checkpoint(tmp_path_factory, "binary")


@pytest.fixture(scope="session")
def multilabel_checkpoint(tmp_path_factory):
    return task_checkpoint(tmp_path_factory, "multilabel")


class Ramps(nn.Module):
    """Logits that ignore the image: channel 0 rises from -2 to 2 along the width, channel 1 (if any) along the
    height, so which pixels pass a threshold is known in advance."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.model_config = {"backbone": {"name": "ramps"}, "head": {"name": "none"}, "num_classes": channels}

    def forward(self, images):
        n, _, h, w = images.shape
        along_w = torch.linspace(-2, 2, w).view(1, 1, 1, w).expand(n, 1, h, w)
        along_h = torch.linspace(-2, 2, h).view(1, 1, h, 1).expand(n, 1, h, w)
        return torch.cat([along_w, along_h], 1)[:, : self.channels].contiguous()


def ramp_probabilities(h: int, w: int) -> torch.Tensor:
    """The sigmoids of :class:`Ramps` (2, H, W)."""
    return Ramps(2)(torch.zeros(1, 3, h, w))[0].sigmoid()
