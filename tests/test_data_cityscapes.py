"""Cityscapes: layout, labelId -> trainId on every id, official names and colours, prepare tool."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from segdense.data import Cityscapes, label_ids_to_train_ids, read_mask
from segdense.data.cityscapes import LABELS
from segdense.data.prepare import prepare_cityscapes
from tests.data_fixtures import make_cityscapes

# The official trainId of every labelId 0..33 (cityscapesScripts labels.py).
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                      26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    return root, make_cityscapes(root)


def test_every_label_id_maps_to_its_train_id():
    ids = np.arange(256)
    mapped = label_ids_to_train_ids(ids)
    for label_id in range(256):
        assert mapped[label_id] == OFFICIAL_TRAIN_IDS.get(label_id, 255), label_id


def test_class_names_and_colours_are_official():
    assert Cityscapes.class_names == ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                                      "truck", "bus", "train", "motorcycle", "bicycle"]
    assert Cityscapes.palette[0] == (128, 64, 128) and Cityscapes.palette[10] == (70, 130, 180)
    assert Cityscapes.palette[18] == (119, 11, 32) and len(Cityscapes.palette) == 19
    assert len(LABELS) == 34


def test_splits_pair_images_with_label_ids(cityscapes):
    root, _ = cityscapes
    train, val = Cityscapes(root, "train"), Cityscapes(root, "val")
    assert len(train) == 3 and len(val) == 1
    for image, mask in train.files:
        assert image.name.replace("_leftImg8bit.png", "") == mask.name.replace("_gtFine_labelIds.png", "")
        assert image.parent.name == mask.parent.name


def test_masks_are_train_ids_on_the_fly(cityscapes):
    root, label_ids = cityscapes
    dataset = Cityscapes(root, "train")
    np.testing.assert_array_equal(dataset.load_mask(0), label_ids_to_train_ids(label_ids))
    assert set(np.unique(dataset.load_mask(0))) == set(range(19)) | {255}


def test_prepared_train_id_files_give_the_same_masks(cityscapes):
    root, label_ids = cityscapes
    assert prepare_cityscapes(root, num_workers=1) == 4
    written = sorted(root.glob("gtFine/*/*/*_gtFine_labelTrainIds.png"))
    assert len(written) == 4
    np.testing.assert_array_equal(Cityscapes(root, "train").load_mask(0), label_ids_to_train_ids(label_ids))


def test_image_without_mask_is_recorded(cityscapes):
    root, _ = cityscapes
    next(root.glob("gtFine/train/bochum/*_labelIds.png")).unlink()
    dataset = Cityscapes(root, "train")
    assert len(dataset) == 2
    assert [path.name for path, _ in dataset.unpaired] == ["bochum_000000_000313_leftImg8bit.png"]


def test_wrong_layout_shows_expected_layout(tmp_path):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="(?s)gtFine/train.*Expected layout.*labelIds"):
        Cityscapes(tmp_path, "train")


def test_prepare_tool_writes_train_ids_in_parallel(cityscapes, capsys):
    path = Path(__file__).resolve().parents[1] / "tools/prepare_cityscapes.py"
    spec = importlib.util.spec_from_file_location("prepare_cityscapes_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root, label_ids = cityscapes
    assert tool.main([str(root), "--workers", "2"]) == 0
    assert "wrote 4" in capsys.readouterr().out
    first = sorted(root.glob("gtFine/train/aachen/*_labelTrainIds.png"))[0]
    np.testing.assert_array_equal(read_mask(first), label_ids_to_train_ids(label_ids))
