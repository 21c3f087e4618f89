"""Hydra composition of conf/, overrides, and configuration errors caught before anything is built."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from segdense.config.train_job import model_config, train
from segdense.config.group_keys import validate_config
from segdense.errors import ConfigError

from train_utils import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_is_the_embedded_synthetic_demo():
    cfg = compose_config()
    assert cfg.dataset.name == "synthetic"
    assert cfg.backbone.name == "densenet121"
    assert cfg.backbone.output_stride == cfg.output_stride
    validate_config(cfg)


def test_the_documented_command_composes():
    cfg = compose_config(["backbone=densenet121", "output_stride=16", "iterations=3"])
    validate_config(cfg)
    kwargs = model_config(cfg, num_classes=5)
    assert kwargs["backbone"] == {"name": "densenet121", "output_stride": 16, "initial_output_stride": 4,
                                  "pretrained": None, "memory_efficient": False, "norm_eval": False,
                                  "frozen_stages": -1}  # conf/backbone/densenet121.yaml
    assert kwargs["num_classes"] == 5
    assert cfg.iterations == 3


@pytest.mark.parametrize("backbone", ["densenet121", "densenet169", "densenet201", "densenet161", "custom"])
@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "deeplabv3plus", "denseaspp", "fpn", "upernet"])
def test_every_backbone_and_head_option_validates(backbone, head):
    validate_config(compose_config([f"backbone={backbone}", f"head={head}", "output_stride=8"]))


@pytest.mark.parametrize("dataset", ["synthetic", "voc", "voc_aug", "cityscapes", "folder", "camvid"])
def test_every_dataset_option_validates(dataset):
    validate_config(compose_config([f"dataset={dataset}"]))


def test_voc_recipe_is_mmseg_like():
    cfg = compose_config(["dataset=voc", "dataset.root=/data/VOCdevkit"])
    assert list(cfg.crop_size) == [512, 512]
    assert cfg.lr == 0.01
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 0.0005
    assert cfg.scheduler.name == "poly" and cfg.scheduler.power == 0.9


def test_cityscapes_recipe_crops_512_by_1024():
    cfg = compose_config(["dataset=cityscapes"])
    assert list(cfg.crop_size) == [512, 1024]


def test_command_line_beats_dataset_recipe():
    cfg = compose_config(["dataset=voc", "crop_size=[256,256]", "lr=0.02"])
    assert list(cfg.crop_size) == [256, 256] and cfg.lr == 0.02


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="iterations"):
        compose_config(["iterations=many"])


def test_unknown_top_level_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="itterations"):
        compose_config(["itterations=5"])


def test_appended_unknown_top_level_key_is_refused_before_building():
    with pytest.raises(ConfigError, match="unknown key 'itterations' \\(did you mean 'iterations'"):
        validate_config(compose_config(["+itterations=5"]))


def test_unknown_group_option_lists_choices():
    with pytest.raises(MissingConfigException, match="densenet121"):
        compose_config(["backbone=densenet12"])


@pytest.mark.parametrize("stride", [12, 64, 2])
def test_invalid_output_stride_is_refused_with_valid_list(stride, tmp_path):
    cfg = compose_config(TINY + [f"output_stride={stride}"])  # DenseNet's constructor owns the check
    with pytest.raises(ConfigError, match=r"backbone/head: output_stride=.* valid output strides: \[4, 8, 16, 32\]"):
        train(cfg, run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_cuda_graphs_on_cpu_is_refused_before_training(tmp_path):
    cfg = compose_config(TINY + ["+backbone.cuda_graphs=true", "device=cpu"])
    with pytest.raises(ConfigError, match=r"backbone.cuda_graphs=true needs device=cuda .*got device=cpu"):
        train(cfg, run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_key_in_group_names_valid_keys():
    cfg = compose_config(["+head.chanels=64"])
    with pytest.raises(ConfigError, match=r"head.chanels is not an argument of deeplabv3plus_lite; valid keys: .*channels"):
        validate_config(cfg)


def test_unknown_dataset_and_loss_names():
    cfg = compose_config(["dataset.name=vocc", "loss.terms=[{name: dyce}]"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "unknown dataset 'vocc'" in str(err.value) and "Did you mean 'voc'" in str(err.value)
    assert "unknown loss 'dyce'" in str(err.value)


def test_several_problems_are_reported_together():
    cfg = compose_config(["+backbone.grwth_rate=8", "+optimizer.momentun=0.9", "+scheduler.powr=1.0",
                          "+dataset.image_sise=64", "loss.terms=[{name: cross_entropy, ignore_indx: 3}]"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert "backbone.grwth_rate is not an argument of densenet121; valid keys: " in text and "growth_rate" in text
    assert "optimizer.momentun is not an argument of sgd" in text and "momentum" in text
    assert "scheduler.powr is not an argument of poly; valid keys: min_lr_ratio, power, warmup_iters" in text
    assert "dataset.image_sise is not an argument of synthetic" in text and "image_size" in text
    assert "loss.terms[0]: loss.ignore_indx is not an argument of cross_entropy" in text


def test_tiny_test_config_validates():
    validate_config(compose_config(TINY))


def test_train_tool_reports_bad_config_without_traceback(tmp_path, capsys):
    # tools/train.py's main is run_tool(train, cfg), Hydra's run folder aside (its command line runs in test_train.py)
    from segdense.config.cli import run_tool

    with pytest.raises(SystemExit) as exit_info:
        run_tool(lambda cfg: train(cfg, run_dir=tmp_path), compose_config(["output_stride=12"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "valid output strides: [4, 8, 16, 32]" in err and err.startswith("error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


def documented_train_commands():
    """Every ``python tools/train.py ...`` single run written in the README and docs/, as its overrides."""
    import re
    import shlex

    found = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")  # a command continued with a backslash is one command
        for match in re.finditer(r"python tools/train\.py([^`\n#]*)", text):
            args = shlex.split(match.group(1).split("&&")[0])
            if "-m" not in args:
                found[" ".join(args)] = args
    return list(found.values())


@pytest.mark.parametrize("overrides", documented_train_commands(), ids=" ".join)
def test_every_documented_train_command_composes_and_its_groups_fit_their_constructors(overrides):
    cfg = compose_config(overrides)
    validate_config(cfg)
    blocks = model_config(cfg, num_classes=5)
    assert blocks["backbone"]["name"] == cfg.backbone.name
    # Backbones with an output stride take the top-level key (FC-DenseNets have none: full resolution).
    assert blocks["backbone"].get("output_stride", cfg.output_stride) == cfg.output_stride
