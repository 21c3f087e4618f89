"""SyntheticHard: the harder embedded dataset (dataset=synthetic_hard)."""
import numpy as np
import pytest

from segdense.config.group_keys import validate_config
from segdense.data import SyntheticHard, build_dataset, validate_dataset

from train_utils import compose_config


def small(split="train", **kwargs):
    return SyntheticHard(split, num_samples=kwargs.pop("num_samples", 12), min_size=64, max_size=64, **kwargs)


def test_samples_are_deterministic_for_a_seed():
    for index in (0, 5, 11):
        image_a, mask_a = small(seed=4).load_raw(index)
        image_b, mask_b = small(seed=4).load_raw(index)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)


def test_samples_differ_across_seeds_indices_and_splits():
    images = [small(seed=0).load_raw(3)[0], small(seed=1).load_raw(3)[0], small(seed=0).load_raw(4)[0],
              small("val", seed=0).load_raw(3)[0]]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j]), (i, j)


def test_masks_are_valid_labels_aligned_with_images():
    dataset = small(num_samples=20)
    seen = set()
    for i in range(len(dataset)):
        image, mask = dataset.load_raw(i)
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
        assert mask.shape == (64, 64)
        values = set(np.unique(mask).tolist())
        assert values <= {0, 1, 2, 3, 4, 255}, values
        seen |= values
    assert seen == {0, 1, 2, 3, 4, 255}  # every class appears, and the ignore band
    report = validate_dataset(dataset)
    assert report.ok, report.format()


def test_colour_does_not_tell_the_class():
    # Mean colour of each class's pixels varies across images about as much as the background's:
    # no class owns a colour family (unlike dataset=synthetic).
    dataset = SyntheticHard("train", num_samples=40, min_size=96, max_size=96)
    means = {c: [] for c in range(1, 5)}
    for i in range(len(dataset)):
        image, mask = dataset.load_raw(i)
        for c in means:
            if (mask == c).sum() >= 20:
                means[c].append(image[mask == c].mean(0))
    for c, values in means.items():
        assert len(values) >= 5, c
        assert np.std(np.array(values), axis=0).mean() > 30, c  # spread over most of the colour range


def test_bars_are_thin_and_objects_vary_in_size():
    dataset = SyntheticHard("train", num_samples=60, min_size=128, max_size=128)
    bar_fraction, object_pixels = [], []
    for i in range(len(dataset)):
        _, mask = dataset.load_raw(i)
        bar_fraction.append((mask == 2).mean())
        object_pixels.append(((mask > 0) & (mask < 255)).sum())
    assert 0 < np.mean(bar_fraction) < 0.02
    assert max(object_pixels) > 10 * max(1, min(object_pixels))


def test_image_sides_vary_within_the_range():
    dataset = SyntheticHard("val", num_samples=10, min_size=40, max_size=56)
    sizes = {dataset.load_raw(i)[0].shape[:2] for i in range(10)}
    assert len(sizes) > 1
    assert all(40 <= s <= 56 for hw in sizes for s in hw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(min_size=64, max_size=32), "min_size <= max_size"),
    (dict(min_size=8, max_size=8), "32 <= min_size"),
    (dict(num_samples=0), "num_samples must be positive"),
])
def test_bad_arguments_have_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticHard("train", **kwargs)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="synthetic_hard"):
        SyntheticHard("trainval")


def test_registered_and_configurable():
    dataset = build_dataset("synthetic_hard", split="val", num_samples=3, min_size=48, max_size=48)
    assert isinstance(dataset, SyntheticHard) and len(dataset) == 3 and dataset.num_classes == 5
    cfg = compose_config(["dataset=synthetic_hard", "dataset.min_size=64", "dataset.max_size=64"])
    assert cfg.dataset.name == "synthetic_hard"
    validate_config(cfg)


def test_without_clutter_the_background_is_plain_texture_and_objects_stay():
    # clutter=False drops the blobs and scratches (random-colour regions labelled background), so
    # background pixels vary much less; the objects are still drawn, with every class present.
    cluttered, plain = small(num_samples=20), small(num_samples=20, clutter=False)
    spread = {True: [], False: []}
    seen = set()
    for i in range(20):
        for dataset in (cluttered, plain):
            image, mask = dataset.load_raw(i)
            spread[dataset.clutter].append(image[mask == 0].astype(np.float32).std(0).mean())
        seen |= set(np.unique(plain.load_raw(i)[1]).tolist())
    assert seen == {0, 1, 2, 3, 4, 255}
    assert np.mean(spread[False]) < 0.8 * np.mean(spread[True])
    assert validate_dataset(plain).ok


def test_clutter_is_configurable_and_checked():
    cfg = compose_config(["dataset=synthetic_hard", "dataset.clutter=false"])
    assert cfg.dataset.clutter is False
    assert build_dataset("synthetic_hard", split="val", num_samples=2, min_size=48, max_size=48, clutter=False).clutter is False
    with pytest.raises(ValueError, match="clutter must be true or false"):
        SyntheticHard("train", clutter="no")
