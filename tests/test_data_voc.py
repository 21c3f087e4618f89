"""Pascal VOC 2012 and the SBD trainaug split (miniature trees in temp dirs)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdense.data import VOCSegmentation, build_dataset, read_mask
from segdense.data.prepare import prepare_voc_aug, read_sbd_mat
from segdense.data.voc import voc_palette
from tests.data_fixtures import make_sbd, make_voc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def voc(tmp_path):
    return tmp_path / "VOCdevkit", make_voc(tmp_path / "VOCdevkit")


def test_splits_list_their_images(voc):
    root, splits = voc
    for split in ("train", "val", "trainval"):
        dataset = VOCSegmentation(root, split)
        assert [image.stem for image, _ in dataset.files] == splits[split]
        assert len(dataset) == len(splits[split])


def test_masks_are_palette_indices_not_colours(voc):
    root, splits = voc
    dataset = VOCSegmentation(root, "train")
    png = dataset.files[0][1]
    assert Image.open(png).mode == "P"
    mask = dataset.load_mask(0)
    stored = np.asarray(Image.open(png))  # the indices as stored in the file
    np.testing.assert_array_equal(mask, stored)
    assert set(np.unique(mask)) <= set(range(21)) | {255}
    assert voc_palette()[1] == (128, 0, 0)  # label 1 is drawn red; reading colours would give 128


def test_rgb_mask_is_refused_with_the_path(tmp_path):
    rgb = tmp_path / "rgb_mask.png"
    Image.fromarray(np.full((4, 4, 3), (128, 0, 0), dtype=np.uint8)).save(rgb)
    with pytest.raises(RuntimeError, match="rgb_mask.png.*palette"):
        read_mask(rgb)


def test_item_is_tensor_pair_with_ignore(voc):
    root, _ = voc
    image, mask = VOCSegmentation(root, "val")[0]
    assert image.shape == (3, 24, 32) and mask.shape == (24, 32)
    assert 255 in mask.unique().tolist()


def test_class_names_and_palette():
    assert len(VOCSegmentation.class_names) == 21
    assert VOCSegmentation.class_names[0] == "background" and VOCSegmentation.class_names[20] == "tvmonitor"
    assert VOCSegmentation.palette[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert VOCSegmentation.palette[15] == (192, 128, 128)  # person


def test_missing_root_shows_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*Expected layout.*JPEGImages"):
        VOCSegmentation(tmp_path / "nowhere", "train")


def test_missing_split_list_names_it(voc):
    root, _ = voc
    with pytest.raises(FileNotFoundError, match="trainaug.txt|SegmentationClassAug"):
        VOCSegmentation(root, "trainaug")


def test_unknown_split_lists_valid_ones(voc):
    with pytest.raises(ValueError, match="train, val, trainval, trainaug"):
        VOCSegmentation(voc[0], "test")


def test_sbd_mat_reads_segmentation(tmp_path, voc):
    make_sbd(tmp_path / "benchmark_RELEASE", voc[0])
    seg = read_sbd_mat(tmp_path / "benchmark_RELEASE/dataset/cls/2008_000100.mat")
    assert seg.shape == (24, 32) and seg.dtype == np.uint8 and seg.max() < 21


def test_prepare_voc_aug_writes_trainaug_without_val(tmp_path, voc):
    root, splits = voc
    sbd = make_sbd(tmp_path / "benchmark_RELEASE", root)
    ids = prepare_voc_aug(root, tmp_path / "benchmark_RELEASE", num_workers=1)
    assert ids == sorted(set(splits["train"]) | {"2008_000100", "2008_000200"})
    assert not set(ids) & set(splits["val"])  # 2007_000033 is in SBD train but is a VOC val image
    listed = (root / "VOC2012/ImageSets/Segmentation/trainaug.txt").read_text().split()
    assert listed == ids
    aug = build_dataset("voc_aug", "trainaug", root=root)
    assert len(aug) == len(ids) and all("SegmentationClassAug" in str(mask) for _, mask in aug.files)
    converted = aug.load_mask(ids.index("2008_000100"))
    np.testing.assert_array_equal(converted, read_sbd_mat(tmp_path / "benchmark_RELEASE/dataset/cls/2008_000100.mat"))
    voc_gt = VOCSegmentation(root, "train").load_mask(0)  # VOC's own annotation wins where it exists
    np.testing.assert_array_equal(aug.load_mask(ids.index(splits["train"][0])), voc_gt)
    assert sbd["train"][1] in splits["val"]


def test_prepare_voc_aug_tool_with_workers_writes_what_one_process_writes(tmp_path, voc, capsys):
    root, splits = voc
    make_sbd(tmp_path / "benchmark_RELEASE", root)
    spec = importlib.util.spec_from_file_location("prepare_voc_aug_tool", ROOT / "tools/prepare_voc_aug.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(root), str(tmp_path / "benchmark_RELEASE"), "--workers", "2"]) == 0
    ids = sorted(set(splits["train"]) | {"2008_000100", "2008_000200"})
    assert f"trainaug: {len(ids)} images" in capsys.readouterr().out
    aug = build_dataset("voc_aug", "trainaug", root=root)
    assert [image.stem for image, _ in aug.files] == ids
    for image_id in ("2008_000100", "2008_000200"):  # converted from SBD by the worker processes
        np.testing.assert_array_equal(aug.load_mask(ids.index(image_id)),
                                      read_sbd_mat(tmp_path / f"benchmark_RELEASE/dataset/cls/{image_id}.mat"))


def test_voc_aug_val_is_voc_val(voc):
    root, splits = voc
    assert [i.stem for i, _ in build_dataset("voc_aug", "val", root=root).files] == splits["val"]


def test_prepare_voc_aug_tool_reports_missing_sbd(tmp_path, voc, capsys):
    spec = importlib.util.spec_from_file_location("prepare_voc_aug_tool", ROOT / "tools/prepare_voc_aug.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(voc[0]), str(tmp_path / "no_sbd")]) == 1
    assert "dataset/cls" in capsys.readouterr().err
