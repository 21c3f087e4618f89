"""The demo recipe (`python tools/train.py` on the embedded synthetic shapes) and how it composes."""
from segdense.config.train_job import model_config
from segdense.config.group_keys import validate_config

from train_utils import compose_config


def test_demo_is_densenet121_at_os16_with_the_half_width_deeplabv3plus_validated_once():
    cfg = compose_config()
    validate_config(cfg)
    kwargs = model_config(cfg, num_classes=5)
    backbone, head = kwargs["backbone"], kwargs["head"]
    assert (backbone["name"], backbone["output_stride"], head["name"]) == ("densenet121", 16, "deeplabv3plus_lite")
    assert head["channels"] == 128 and head["low_level_channels"] == 48
    assert cfg.iterations == 100 and cfg.val_interval == 100 and cfg.checkpoint_interval == 100


def test_the_full_width_head_is_one_option_away():
    cfg = compose_config(["head=deeplabv3plus"])
    assert (cfg.head.name, cfg.head.channels) == ("deeplabv3plus", 256)
    validate_config(cfg)


def test_the_default_head_serves_every_dataset():
    for dataset in ("voc", "cityscapes", "synthetic_hard"):
        cfg = compose_config([f"dataset={dataset}"])
        assert (cfg.head.name, cfg.head.channels) == ("deeplabv3plus_lite", 128), dataset
        validate_config(cfg)
