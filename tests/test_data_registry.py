"""build_dataset registry and the Hydra dataset configs."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from segdense.config.schema import register_schema
from segdense.data import SyntheticShapes, build_dataset, list_datasets
from tests.data_fixtures import make_cityscapes, make_folder, make_voc

CONF = Path(__file__).resolve().parents[1] / "conf"
RECIPES = {"synthetic": ([128, 128], 8), "voc": ([512, 512], 16), "voc_aug": ([512, 512], 16),
           "cityscapes": ([512, 1024], 8), "folder": ([512, 512], 8), "scenes": ([512, 512], 8)}


def dataset_config(name, *overrides):
    register_schema()  # conf/config.yaml extends it (other test files may not have registered it)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=[f"dataset={name}", *overrides])


def test_list_datasets_names_every_dataset():
    assert list_datasets() == ["ade20k", "camvid", "cityscapes", "folder", "scenes", "synthetic", "synthetic_binary",
                               "synthetic_hard", "synthetic_multilabel", "voc", "voc_aug"]


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="(?s)unknown dataset 'vocc'.*'voc'.*camvid, cityscapes, folder, scenes, synthetic"):
        build_dataset("vocc", "train")


def test_unknown_argument_names_the_dataset():
    with pytest.raises(TypeError, match="dataset 'synthetic'.*colour"):
        build_dataset("synthetic", "train", colour=3)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_has_recipe_and_split_keys(name):
    cfg = dataset_config(name)
    assert cfg.dataset.name == name and "train_split" in cfg.dataset and "val_split" in cfg.dataset
    assert (list(cfg.crop_size), cfg.batch_size) == RECIPES[name]
    assert cfg.iterations > 0 and cfg.lr == (0.02 if name == "synthetic" else 0.01)


def build_from_config(cfg, split_key):
    spec = OmegaConf.to_container(cfg.dataset, resolve=True)
    return build_dataset(split=spec[split_key], **spec)


def test_synthetic_config_builds_both_splits():
    cfg = dataset_config("synthetic", "dataset.num_samples=6")
    train, val = build_from_config(cfg, "train_split"), build_from_config(cfg, "val_split")
    assert isinstance(train, SyntheticShapes) and (train.split, val.split, len(val)) == ("train", "val", 6)


def test_file_dataset_configs_build_on_miniature_trees(tmp_path):
    make_voc(tmp_path / "VOCdevkit")
    make_cityscapes(tmp_path / "cityscapes")
    make_folder(tmp_path / "mine", ["a", "b"])
    (tmp_path / "mine" / "splits").mkdir()
    (tmp_path / "mine" / "splits" / "val.txt").write_text("b\n")
    voc = build_from_config(dataset_config("voc", f"dataset.root={tmp_path / 'VOCdevkit'}"), "val_split")
    city = build_from_config(dataset_config("cityscapes", f"dataset.root={tmp_path / 'cityscapes'}"), "train_split")
    folder = build_from_config(dataset_config("folder", f"dataset.root={tmp_path / 'mine'}",
                                              "dataset.class_names=[bg,x,y]"), "val_split")
    assert (len(voc), voc.num_classes) == (2, 21)
    assert (len(city), city.num_classes) == (3, 19)
    assert (len(folder), folder.class_names) == (1, ["bg", "x", "y"])
