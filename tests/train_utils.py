"""Composing small training configurations for tests."""
from pathlib import Path

from hydra import compose, initialize_config_dir

from segdense.config.schema import register_schema

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
    "tensorboard=false",
    "report=false",
]


def compose_config(overrides=()):
    register_schema()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
