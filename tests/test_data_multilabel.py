"""Multilabel masks in the folder dataset: a C-band TIFF or .npy (H, W, C) or (C, H, W), or one PNG per class,
with 255 ignored; wrong band counts and values are one error naming the file."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from segdense.data.folder import FolderDataset
from segdense.data.io import DatasetFileError
from segdense.data.multilabel_masks import read_multilabel_mask

NAMES = ["cell", "nucleus", "border"]


def bands(seed=0, h=6, w=5):
    mask = np.random.default_rng(seed).integers(0, 2, (h, w, 3))
    mask[0, 0] = 255  # every label of one pixel ignored
    mask[1, 1, 2] = 255  # one label of another
    return mask


def make_folder(root, layout, h=6, w=5):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / f"s{i}.png")
        mask = bands(i, h, w)
        if layout == "tiff":
            tifffile.imwrite(root / "masks" / f"s{i}.tif", mask.astype(np.uint8))
        elif layout == "npy_chw":
            np.save(root / "masks" / f"s{i}.npy", np.moveaxis(mask, -1, 0).astype(np.uint8))
        else:
            for c, name in enumerate(NAMES):
                (root / "masks" / name).mkdir(exist_ok=True)
                Image.fromarray(mask[..., c].astype(np.uint8)).save(root / "masks" / name / f"s{i}.png")


@pytest.mark.parametrize("layout", ["tiff", "npy_chw", "png_per_class"])
def test_every_multilabel_layout_gives_the_same_targets(layout, tmp_path):
    make_folder(tmp_path, layout)
    dataset = FolderDataset(tmp_path, NAMES, multilabel=True)
    assert dataset.mask_task == "multilabel" and len(dataset) == 2 and not dataset.unpaired
    for i in range(2):
        image, target = dataset[i]
        assert target.shape == (3, 6, 5)
        assert np.array_equal(target.numpy(), np.moveaxis(bands(i), -1, 0))


def test_a_mask_whose_band_count_is_not_the_class_count_names_the_file(tmp_path):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.zeros((6, 5, 2), np.uint8))
    with pytest.raises(DatasetFileError, match=r"m\.tif: multilabel mask of shape \(6, 5, 2\): neither its first "
                                               r"nor its last axis could hold the 3 class bands"):
        read_multilabel_mask(path, 3)


def test_values_other_than_0_1_and_255_are_refused(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.full((4, 4, 3), 7, np.uint8))
    with pytest.raises(DatasetFileError, match=r"m\.npy: multilabel mask holds values \[7\]; expected 0, 1 and 255"):
        read_multilabel_mask(path, 3)


def test_training_on_a_multilabel_folder(tmp_path):
    from segdense.config.train_job import train

    from train_utils import TINY, compose_config

    root = tmp_path / "data"
    make_folder(root, "tiff", 32, 40)
    overrides = [o for o in TINY if not o.startswith(("dataset.", "crop_size"))]
    result = train(compose_config(overrides + [
        "dataset=folder", f"dataset.root={root}", "dataset.train_split=all", "dataset.val_split=all",
        f"dataset.class_names=[{','.join(NAMES)}]", "dataset.multilabel=true", "task=multilabel",
        "crop_size=[32,32]", "batch_size=2", "val_batch_size=2", "iterations=2", "val_interval=2",
        "checkpoint_interval=2"]), run_dir=tmp_path / "run")
    assert [c["name"] for c in result["per_class"]] == NAMES
    labelled = (np.stack([bands(0, 32, 40), bands(1, 32, 40)]) != 255).sum(axis=(0, 1, 2))
    assert [int(np.sum(c)) for c in result["confusion"]] == labelled.tolist()
