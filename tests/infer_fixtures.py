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
    # Imported by several test modules, so pytest may instantiate it once per module: the run directory in the
    # session's base temp folder makes every instance after the first reuse the same checkpoint.
    from segdense.config.train_job import train

    run_dir = tmp_path_factory.getbasetemp() / "tiny_infer_run"
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        train(compose_config(TINY_EVAL), run_dir=run_dir)
        torch.use_deterministic_algorithms(False)
    return checkpoint


class OneHotOracle(nn.Module):
    """A stand-in model whose logits are the one-hot of the class index written in the image's channel
    ``channel`` (so it predicts whatever the image says, at any size, crop or batch)."""

    def __init__(self, num_classes: int, channel: int = 0):
        super().__init__()
        self.num_classes, self.channel = num_classes, channel
        self.model_config = {"backbone": {"name": "oracle"}, "head": {"name": "one-hot"}, "num_classes": num_classes}

    def forward(self, images):
        labels = images[:, self.channel].round().long().clamp(0, self.num_classes - 1)
        return torch.nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()


class TensorDataset(torch.utils.data.Dataset):
    """In-memory (image, mask) pairs of any sizes, with class names (for the evaluation loop)."""

    def __init__(self, pairs, class_names):
        self.pairs, self.class_names = pairs, list(class_names)

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]

    def describe(self, i):
        return f"memory[{i}]", f"memory[{i}]"


def oracle_bundle(num_classes: int, channel: int = 0):
    from segdense.inference.loading import ModelBundle, default_palette

    return ModelBundle(OneHotOracle(num_classes, channel), [f"class{i}" for i in range(num_classes)],
                       default_palette(num_classes), source="oracle")


def labelled_images(sizes, num_classes: int, seed: int = 0):
    """(image, mask) pairs whose image channel 0 holds the mask's labels (channels 1, 2 noise)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for h, w in sizes:
        mask = torch.randint(0, num_classes, (h, w), generator=generator)
        image = torch.rand(3, h, w, generator=generator)
        image[0] = mask.float()
        pairs.append((image, mask))
    return pairs


def write_image(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path, **save_kwargs)
    return path
