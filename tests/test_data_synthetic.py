"""SyntheticShapes: the embedded, procedurally generated dataset."""

import numpy as np
import pytest
import torch

from segdense.data import SyntheticShapes


def test_sample_is_deterministic_for_a_seed():
    first, second = SyntheticShapes("train", seed=3), SyntheticShapes("train", seed=3)
    for index in (0, 7, 1999):
        image_a, mask_a = first.load_raw(index)
        image_b, mask_b = second.load_raw(index)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)


def test_samples_differ_across_seeds_and_indices():
    image_seed0, _ = SyntheticShapes("train", seed=0).load_raw(5)
    image_seed1, _ = SyntheticShapes("train", seed=1).load_raw(5)
    image_other, _ = SyntheticShapes("train", seed=0).load_raw(6)
    assert not np.array_equal(image_seed0, image_seed1)
    assert not np.array_equal(image_seed0, image_other)


def test_train_and_val_share_no_scene():
    train = {SyntheticShapes("train", num_samples=200).load_raw(i)[0].tobytes() for i in range(200)}
    val = {SyntheticShapes("val", num_samples=50).load_raw(i)[0].tobytes() for i in range(50)}
    assert train.isdisjoint(val)


def test_raw_sample_types_shapes_and_labels():
    dataset = SyntheticShapes("val", num_samples=10, image_size=(96, 128))
    image, mask = dataset.load_raw(0)
    assert image.dtype == np.uint8 and image.shape == (96, 128, 3)
    assert mask.shape == (96, 128)
    labels = set(np.unique(np.concatenate([dataset.load_raw(i)[1].ravel() for i in range(10)])))
    assert labels == {0, 1, 2, 3, 4, 255}
    assert dataset.class_names == ["background", "circle", "rectangle", "triangle", "ring"]
    assert len(dataset.palette) == dataset.num_classes == 5 and dataset.ignore_index == 255


def test_ignore_covers_only_borders_and_small_patches():
    dataset = SyntheticShapes("train", num_samples=50)
    ignored = np.mean([(dataset.load_raw(i)[1] == 255).mean() for i in range(50)])
    assert 0.005 < ignored < 0.10


def test_item_is_normalised_tensor_pair():
    image, mask = SyntheticShapes("train", num_samples=4)[1]
    assert image.dtype == torch.float32 and image.shape == (3, 128, 128)
    assert mask.dtype == torch.int64 and mask.shape == (128, 128)
    assert -3 < float(image.mean()) < 3 and float(image.std()) > 0.2


def test_rejects_unknown_split_and_bad_sizes():
    with pytest.raises(ValueError, match="train, val, test"):
        SyntheticShapes("validation")
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticShapes("train", num_samples=0)
    with pytest.raises(IndexError):
        SyntheticShapes("train", num_samples=3)[3]
