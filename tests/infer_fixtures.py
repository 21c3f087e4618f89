"""A tiny trained checkpoint shared by the evaluation, inference, export and hub tests (trained once per
session: a few seconds on 2 CPU cores)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from train_utils import TINY, compose_config

# deeplabv3 exercises the ASPP image pooling (dynamic sizes in export); 5 synthetic classes; 48x48 images.
TINY_EVAL = [o for o in TINY if not o.startswith(("head", "dataset.image_size", "crop_size"))] + [
    "head=deeplabv3", "head.channels=16", "dataset.image_size=48", "crop_size=[48,48]", "iterations=2",
    "val_interval=2", "checkpoint_interval=2",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from segdense.config.train_job import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    train(compose_config(TINY_EVAL), run_dir=run_dir)
    torch.use_deterministic_algorithms(False)
    return run_dir / "checkpoints" / "last.pt"


class OneHotOracle(nn.Module):
    """Predicts the labels it is given: logits are the one-hot of ``labels`` (a stand-in perfect model)."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("labels", labels)
        self.num_classes = num_classes

    def forward(self, images):
        labels = self.labels[: images.shape[0], : images.shape[-2], : images.shape[-1]].clamp(max=self.num_classes - 1)
        return torch.nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()


def write_image(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path, **save_kwargs)
    return path
