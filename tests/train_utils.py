"""Composing small training configurations for tests."""
import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

import torch
from hydra import compose, initialize_config_dir

from segdense import build_model
from segdense.config.schema import register_schema
from segdense.data import SyntheticShapes
from segdense.engine import Trainer, TrainSettings, build_optimizer, build_scheduler
from segdense.losses import build_criterion

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# A tiny DenseNet on small synthetic images: seconds per run on 2 CPU cores.
TINY = [
    "backbone=custom",
    "backbone.num_units_per_block=[1,1,1,1]",
    "backbone.growth_rate=8",
    "head=fcn",
    "head.channels=16",
    "head.num_convs=1",
    "dataset.num_samples=8",
    "dataset.image_size=64",
    "crop_size=[64,64]",
    "batch_size=4",
    "val_batch_size=4",
    "iterations=4",
    "val_interval=2",
    "checkpoint_interval=2",
    "log_interval=1",
    "num_workers=0",
    "validate_data=off",
    "logger=[]",
    "report=false",
]


def compose_config(overrides=()):
    register_schema()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def tiny_trainer(run_dir, iterations, trainer_options=None, **settings):
    """A Trainer built from plain arguments: tiny DenseNet + FCN on 32x32 synthetic shapes, no validation."""
    torch.manual_seed(0)
    model = build_model("densenet_custom", {"name": "fcn", "channels": 16}, num_classes=5, output_stride=16,
                        num_units_per_block=[1, 1, 1, 1], growth_rate=8)
    train_set = SyntheticShapes(split="train", num_samples=8, image_size=32)
    optimizer = build_optimizer("sgd", model, 0.01, momentum=0.9)
    settings = TrainSettings(iterations=iterations, batch_size=4, device="cpu", log_interval=1,
                             **settings)
    return Trainer(model, build_criterion([{"name": "cross_entropy"}], num_classes=5), optimizer,
                   build_scheduler("poly", optimizer, iterations), train_set, None, settings, run_dir,
                   **(trainer_options or {}))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_within(fn, args, nprocs: int, seconds: float) -> None:
    """``fn(rank, *args)`` in ``nprocs`` spawned processes; they are killed and the test fails after ``seconds``."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {nprocs} processes did not finish within {seconds} s")
