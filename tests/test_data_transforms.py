"""Augmentation pipelines built from YAML-like lists, and the cat_max_ratio random crop."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from segdense.data import CatMaxRandomCrop, build_transforms

CONF = Path(__file__).resolve().parents[1] / "conf"
LUT = np.array([[0, 0, 0], [200, 40, 40], [40, 200, 40], [40, 40, 200], [220, 220, 40]], dtype=np.uint8)


def aligned_pattern(seed=0, height=96, width=128, block=32):
    """An image whose colour encodes the label (``LUT``): random labels 0..4 on blocks of 32 px."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, size=(height // block, width // block))
    mask = np.kron(coarse, np.ones((block, block), dtype=np.int64)).astype(np.uint8)
    return LUT[mask], mask


GEOMETRIC = [
    {"type": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},
    {"type": "PadIfNeeded", "min_height": 64, "min_width": 64, "border_mode": 0, "fill": 0, "fill_mask": 255},
    {"type": "CatMaxRandomCrop", "height": 64, "width": 64, "cat_max_ratio": 0.75},
    {"type": "HorizontalFlip", "p": 0.5},
]


def compose_config(*overrides):
    from segdense.config.schema import register_schema

    register_schema()  # conf/config.yaml extends the typed schema; do not rely on another module registering it
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


def test_image_and_mask_stay_aligned_through_scale_crop_and_flip():
    transform = build_transforms(GEOMETRIC, seed=0)
    for trial in range(20):
        image, mask = aligned_pattern(seed=trial)
        image_t, mask_t = transform(image, mask)
        assert image_t.shape == (3, 64, 64) and mask_t.shape == (64, 64)
        pixels = image_t.permute(1, 2, 0)
        nearest_label = ((pixels[..., None, :] - torch.from_numpy(LUT.astype(np.float32))) ** 2).sum(-1).argmin(-1)
        labelled = mask_t != 255
        agreement = (nearest_label[labelled] == mask_t[labelled]).float().mean()
        assert agreement > 0.95  # only the interpolated rims between blocks may differ


def test_flip_moves_mask_with_image():
    image, mask = aligned_pattern()
    image_t, mask_t = build_transforms([{"type": "HorizontalFlip", "p": 1.0}])(image, mask)
    np.testing.assert_array_equal(mask_t.numpy(), mask[:, ::-1])
    np.testing.assert_array_equal(image_t.permute(1, 2, 0).numpy(), image[:, ::-1].astype(np.float32))


def test_nested_one_of_and_some_of_build_and_move_the_mask_with_the_image():
    spec = [
        {"type": "OneOf", "p": 1.0, "transforms": [{"type": "HorizontalFlip", "p": 1.0},
                                                   {"type": "VerticalFlip", "p": 1.0}]},
        {"type": "SomeOf", "n": 1, "p": 1.0, "transforms": [
            {"type": "OneOf", "p": 1.0, "transforms": [{"type": "Transpose", "p": 1.0}]},  # OneOf inside SomeOf
        ]},
    ]
    transform = build_transforms(spec, seed=0)
    assert [type(t).__name__ for t in transform.pipeline.transforms] == ["OneOf", "SomeOf"]
    assert type(transform.pipeline.transforms[1].transforms[0].transforms[0]).__name__ == "Transpose"
    image, mask = aligned_pattern()
    flips = {"h": (mask[:, ::-1]).T, "v": (mask[::-1, :]).T}  # one flip, then the transpose
    seen = set()
    for _ in range(12):
        image_t, mask_t = transform(image, mask)
        match = [k for k, expected in flips.items() if np.array_equal(mask_t.numpy(), expected)]
        assert len(match) == 1
        seen.update(match)
        colours = image_t.permute(1, 2, 0).numpy().astype(np.uint8)
        np.testing.assert_array_equal(colours, LUT[mask_t.numpy()])  # the image went through the same steps
    assert seen == {"h", "v"}  # OneOf picks either


def test_padding_fills_image_with_zero_and_mask_with_ignore():
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    mask = np.ones((20, 30), dtype=np.uint8)
    pad = [{"type": "PadIfNeeded", "min_height": 32, "min_width": 40, "border_mode": 0, "fill": 0,
            "fill_mask": 255, "position": "top_left"}]
    image_t, mask_t = build_transforms(pad)(image, mask)
    assert mask_t.shape == (32, 40)
    assert (mask_t[:20, :30] == 1).all() and (mask_t[20:] == 255).all() and (mask_t[:, 30:] == 255).all()
    assert (image_t[:, 20:] == 0).all() and (image_t[:, :20, :30] == 100).all()


def test_scaling_keeps_mask_values_exact():
    image, mask = aligned_pattern()
    mask[40:41, :] = 255
    _, mask_t = build_transforms([{"type": "RandomScale", "scale_limit": [0.37, 0.37], "p": 1.0}])(image, mask)
    assert set(mask_t.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_linear_mask_interpolation_is_refused():
    with pytest.raises(ValueError, match="nearest"):
        build_transforms([{"type": "Resize", "height": 8, "width": 8, "mask_interpolation": 1}])


def test_unknown_transform_names_the_closest_valid_one():
    with pytest.raises(ValueError, match="HorizontalFlip"):
        build_transforms([{"type": "HorizontalFlipp"}])


def test_bad_arguments_name_the_transform():
    with pytest.raises(ValueError, match="PadIfNeeded"):
        build_transforms([{"type": "PadIfNeeded", "mask_value": 255}])


def test_cat_max_ratio_avoids_single_class_crops():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 48:] = 1  # class 1 only in the right-most 16 columns
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    crop = build_transforms([{"type": "CatMaxRandomCrop", "height": 16, "width": 16, "cat_max_ratio": 0.75,
                              "max_tries": 100}], seed=0)
    plain = build_transforms([{"type": "CatMaxRandomCrop", "height": 16, "width": 16}], seed=0)
    mixed = [len(crop(image, mask)[1].unique()) > 1 for _ in range(30)]
    plain_mixed = [len(plain(image, mask)[1].unique()) > 1 for _ in range(30)]
    assert all(mixed) and sum(plain_mixed) < 25


def test_cat_max_crop_rejects_too_small_input():
    with pytest.raises(ValueError, match="PadIfNeeded"):
        CatMaxRandomCrop(32, 32)(image=np.zeros((16, 16, 3), np.uint8), mask=np.zeros((16, 16), np.uint8))


def test_output_types_are_float_image_and_long_mask():
    image, mask = aligned_pattern()
    image_t, mask_t = build_transforms([{"type": "Normalize"}])(image, mask)
    assert image_t.dtype == torch.float32 and mask_t.dtype == torch.int64 and image_t.shape == (3, 96, 128)
    assert float(image_t[0, 0, 0]) == pytest.approx((LUT[mask[0, 0], 0] / 255 - 0.485) / 0.229, abs=1e-4)


def test_same_seed_gives_same_augmentation():
    image, mask = aligned_pattern()
    first = build_transforms(GEOMETRIC, seed=5)(image, mask)
    second = build_transforms(GEOMETRIC, seed=5)(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_default_yaml_resolves_crop_size_and_builds():
    cfg = compose_config("crop_size=[48,64]")
    spec = OmegaConf.to_container(cfg.augmentation, resolve=True)
    crop = next(item for item in spec["train"] if item["type"] == "CatMaxRandomCrop")
    assert (crop["height"], crop["width"]) == (48, 64)
    image, mask = aligned_pattern()
    image_t, mask_t = build_transforms(spec["train"], seed=0)(image, mask)
    assert image_t.shape == (3, 48, 64) and mask_t.shape == (48, 64)
    image_e, mask_e = build_transforms(spec["eval"])(image, mask)
    assert image_e.shape == (3, 96, 128) and torch.equal(mask_e, torch.from_numpy(mask).long())


def test_mask_values_beyond_8_bits_are_refused():
    image, mask = aligned_pattern()
    with pytest.raises(ValueError, match="0, 255"):
        build_transforms([{"type": "Normalize"}])(image, mask.astype(np.int64) + 300)
