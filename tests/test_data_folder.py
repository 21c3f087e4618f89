"""FolderDataset: the user's own images/ + masks/."""
import numpy as np
import pytest
from PIL import Image

from segdense.data import FolderDataset
from tests.data_fixtures import make_folder


def test_pairs_by_stem_across_image_formats(tmp_path):
    make_folder(tmp_path, ["a", "b"], image_ext=".jpg")
    make_folder(tmp_path, ["c"], image_ext=".png")
    dataset = FolderDataset(tmp_path, class_names=["bg", "x", "y"])
    assert [image.name for image, _ in dataset.files] == ["a.jpg", "b.jpg", "c.png"]
    image, mask = dataset.load_raw(0)
    assert image.shape == (20, 30, 3) and mask.shape == (20, 30)
    assert dataset.num_classes == 3 and len(dataset.palette) == 3 and dataset.palette[1] == (128, 0, 0)


def test_split_list_selects_images(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("c\na\n")
    dataset = FolderDataset(tmp_path, class_names=["bg", "x", "y"], split="val")
    assert [image.stem for image, _ in dataset.files] == ["c", "a"]
    with pytest.raises(FileNotFoundError, match="train.txt"):
        FolderDataset(tmp_path, class_names=["bg", "x", "y"], split="train")


def test_palette_png_masks_read_as_indices(tmp_path):
    make_folder(tmp_path, ["a"])
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    png = Image.fromarray(mask)
    png.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [255] * 759)
    png.save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    np.testing.assert_array_equal(FolderDataset(tmp_path, class_names=["bg", "x", "y"]).load_mask(0), mask)


def test_rgb_coded_masks_map_through_mask_colors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [0, 255, 0]], [[255, 0, 0], [9, 9, 9], [0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    dataset = FolderDataset(tmp_path, class_names=["bg", "red", "green"],
                            mask_colors=[[0, 0, 0], [255, 0, 0], [0, 255, 0]])
    np.testing.assert_array_equal(dataset.load_mask(0), [[0, 1, 2], [1, 255, 0]])


def test_folder_config_keys_palette_image_dir_and_mask_dir(tmp_path):
    from segdense.data import build_dataset

    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "images").rename(tmp_path / "rgb")
    (tmp_path / "masks").rename(tmp_path / "labels")
    palette = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    dataset = build_dataset("folder", root=str(tmp_path), class_names=["bg", "x", "y"], split="all", palette=palette,
                            image_dir="rgb", mask_dir="labels")
    assert [(i.parent.name, m.parent.name, i.stem) for i, m in dataset.files] == [("rgb", "labels", "a"),
                                                                                  ("rgb", "labels", "b")]
    assert dataset.palette == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert dataset.load_raw(1)[1].shape == (20, 30)
    with pytest.raises(ValueError, match="palette has 2 colours for 3 classes"):
        build_dataset("folder", root=str(tmp_path), class_names=["bg", "x", "y"], palette=palette[:2],
                      split="all", image_dir="rgb", mask_dir="labels")
    with pytest.raises(FileNotFoundError, match="missing folder images/"):
        build_dataset("folder", root=str(tmp_path), class_names=["bg", "x", "y"], split="all")


def test_unpaired_files_are_recorded(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "masks" / "b.png").unlink()
    (tmp_path / "images" / "a.png").rename(tmp_path / "images" / "z.png")
    dataset = FolderDataset(tmp_path, class_names=["bg", "x", "y"])
    assert dataset.files == []
    assert sorted((path.name, problem) for path, problem in dataset.unpaired) == [
        ("a.png", "mask has no image"), ("b.png", "image has no mask"), ("z.png", "image has no mask")]


def test_missing_folders_show_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)missing folder images/.*Expected layout"):
        FolderDataset(tmp_path, class_names=["bg"])


def test_class_names_are_required(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        FolderDataset(tmp_path, class_names=[])
