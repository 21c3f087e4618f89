"""ADE20K (ADEChallengeData2016) on a miniature tree in the real layout: the label mapping, mmseg's classes and
palette, unpaired files and values above 150 reported."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from segdense.config.check_job import check_job
from segdense.data import ADE20K, build_dataset, validate_dataset
from segdense.data.ade20k import CLASS_NAMES, PALETTE, reduce_zero_label
from segdense.data.doctor import diagnose, inspect_split
from segdense.data.io import write_index_png
from segdense.errors import ConfigError, MissingFileError
from tests.data_fixtures import make_ade20k

from train_utils import compose_config


@pytest.fixture
def ade(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    return root, make_ade20k(root)


def test_zero_becomes_ignore_and_every_class_value_k_becomes_k_minus_one():
    annotation = np.arange(151, dtype=np.int64).reshape(1, -1)
    labels = reduce_zero_label(annotation)
    assert labels[0, 0] == 255
    np.testing.assert_array_equal(labels[0, 1:], np.arange(150))
    assert reduce_zero_label(np.array([255]))[0] == 255  # mmseg: 255 - 1 = 254 -> 255


def test_values_above_150_keep_the_value_the_file_holds():
    np.testing.assert_array_equal(reduce_zero_label(np.array([151, 200, 254])), [151, 200, 254])


def test_the_dataset_reads_the_annotation_files_through_the_mapping(ade):
    root, splits = ade
    dataset = ADE20K(root, "training")
    assert [image.stem for image, _ in dataset.files] == splits["training"] and dataset.unpaired == []
    assert dataset.files[0] == (root / "images" / "training" / "ADE_train_00000001.jpg",
                                root / "annotations" / "training" / "ADE_train_00000001.png")
    stored = np.asarray(Image.open(dataset.files[0][1])).astype(np.int64)
    assert {0, 1, 2, 150} <= set(np.unique(stored).tolist())
    mask = dataset.load_mask(0)
    np.testing.assert_array_equal(mask[stored == 0], 255)
    np.testing.assert_array_equal(mask[stored > 0], stored[stored > 0] - 1)
    assert mask[stored == 150].min() == 149 and mask.max() == 255
    image, target = dataset[0]
    assert image.shape == (3, 16, 24) and target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(mask))


def test_both_splits_are_built_by_name(ade):
    root, splits = ade
    val = build_dataset("ade20k", split="validation", root=root)
    assert [image.stem for image, _ in val.files] == splits["validation"]
    assert all(image.parent == root / "images" / "validation" for image, _ in val.files)


def test_train_and_val_name_the_training_and_validation_folders_as_for_every_other_dataset(ade):
    root, splits = ade
    for short, folder in (("train", "training"), ("val", "validation")):
        dataset = build_dataset("ade20k", split=short, root=root)
        assert dataset.files == ADE20K(root, folder).files and dataset.split == folder
        assert [image.stem for image, _ in dataset.files] == splits[folder]
        assert all(image.parent == root / "images" / folder for image, _ in dataset.files)



def test_the_check_tool_reads_both_splits_by_their_short_names(ade, capsys):
    root, _ = ade
    check_job(compose_config(["dataset=ade20k", f"dataset.root={root}", "dataset.train_split=train",
                              "dataset.val_split=val", "+full=true", "+report_dir=null"]))
    out = capsys.readouterr().out
    assert "ade20k split 'train': ADE20K(3 samples, 150 classes)" in out
    assert "ade20k split 'val': ADE20K(2 samples, 150 classes)" in out


# sha256 of repr() of mmseg 1.2.2's ADE20KDataset.METAINFO classes (as a list) and palette, taken once from mmseg.
MMSEG_CLASSES_SHA = "510d520d4e28ef22"
MMSEG_PALETTE_SHA = "5ab25d7f9334ae47"


def _sha(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def test_the_150_classes_are_mmsegs_in_order():
    assert len(CLASS_NAMES) == 150 and ADE20K.class_names is CLASS_NAMES
    assert _sha(list(CLASS_NAMES)) == MMSEG_CLASSES_SHA
    assert CLASS_NAMES[:3] == ["wall", "building", "sky"]
    assert CLASS_NAMES[7] == "bed "  # mmseg's own spelling, trailing space included
    assert CLASS_NAMES[12] == "person" and CLASS_NAMES[-1] == "flag"
    assert len(set(CLASS_NAMES)) == 150


def test_the_palette_is_mmsegs():
    assert len(PALETTE) == 150 and _sha([list(c) for c in PALETTE]) == MMSEG_PALETTE_SHA
    assert PALETTE[6] == PALETTE[48] == (140, 140, 140)  # road and skyscraper share a colour in mmseg's palette
    assert PALETTE[:3] == [(120, 120, 120), (180, 120, 120), (6, 230, 230)]
    assert PALETTE[12] == (150, 5, 61) and PALETTE[-1] == (92, 0, 255)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)


def test_an_image_without_annotation_and_the_reverse_are_reported_not_dropped(ade):
    root, _ = ade
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    write_index_png(root / "annotations" / "training" / "ADE_train_00000009.png", np.ones((16, 24), np.uint8))
    dataset = ADE20K(root, "training")
    assert len(dataset) == 2
    assert dataset.unpaired == [
        (root / "images" / "training" / "ADE_train_00000002.jpg",
         f"image has no annotation {root / 'annotations' / 'training' / 'ADE_train_00000002.png'}"),
        (root / "annotations" / "training" / "ADE_train_00000009.png",
         f"annotation has no image {root / 'images' / 'training' / 'ADE_train_00000009.jpg'}")]
    report = validate_dataset(dataset, sample=None)
    assert sum("ADE_train_00000002.jpg: image has no annotation" in e for e in report.errors) == 1
    assert sum("ADE_train_00000009.png: annotation has no image" in e for e in report.errors) == 1


def test_values_above_150_are_reported_by_validation_and_the_doctor(ade):
    root, _ = ade
    bad = np.full((16, 24), 5, dtype=np.uint8)
    bad[:4, :4] = 151
    bad[4:8, :4] = 200
    write_index_png(root / "annotations" / "validation" / "ADE_val_00000002.png", bad)
    dataset = ADE20K(root, "validation")
    report = validate_dataset(dataset, sample=None)
    path = root / "annotations" / "validation" / "ADE_val_00000002.png"
    assert report.errors == [f"{path}: label values [151, 200] outside [0, 150) and 255"]
    findings = diagnose([inspect_split(dataset, "validation", [0, 1])], dataset.class_names)
    assert [f.kind for f in findings if f.severity == "error"] == ["outside_values"]
    message = next(f.message for f in findings if f.kind == "outside_values")
    assert "mask values outside [0, 150) and 255: 151 in 1 mask(s)" in message and "200 in 1 mask(s)" in message


def test_check_dataset_reads_both_splits_and_fails_on_a_value_above_150(ade, tmp_path, capsys):
    root, _ = ade
    cfg = compose_config(["dataset=ade20k", f"dataset.root={root}", "+full=true", "+report_dir=null"])
    check_job(cfg)
    out = capsys.readouterr().out
    assert "ade20k split 'training': ADE20K(3 samples, 150 classes)" in out
    assert "ade20k split 'validation': ADE20K(2 samples, 150 classes)" in out
    assert "checked 3 of 3 samples: OK" in out and "checked 2 of 2 samples: OK" in out
    write_index_png(root / "annotations" / "training" / "ADE_train_00000003.png", np.full((16, 24), 180, np.uint8))
    assert check_job(cfg) == 1
    assert "ADE_train_00000003.png: label values [180] outside [0, 150) and 255" in capsys.readouterr().out


def test_a_wrong_root_or_split_names_the_layout(tmp_path):
    (tmp_path / "ADE" / "images" / "training").mkdir(parents=True)
    with pytest.raises(MissingFileError, match=r"(?s)missing folder annotations/training/.*Expected layout:.*"
                                               r"ADE_\{train,val\}_<8 digits>.png"):
        ADE20K(tmp_path / "ADE", "training")
    with pytest.raises(ConfigError, match="unknown ADE20K split 'test'; valid splits: training, validation, train, "
                                          "val"):
        ADE20K(tmp_path / "ADE", "test")
