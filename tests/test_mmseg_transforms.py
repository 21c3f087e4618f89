"""mmseg's train transforms (RandomResize, CatMaxRandomCrop, PhotoMetricDistortion, KeepRatioResize) against
their definitions in mmseg/mmcv, with seeded draws; and conf/augmentation/ade20k.yaml end to end."""
import random

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from segdense.data import build_transforms
from segdense.data.mmseg_transforms import (CatMaxRandomCrop, KeepRatioResize, PhotoMetricDistortion, RandomResize,
                                            rescale_size)

from train_utils import compose_config


def rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size, scale, expected", [
    ((512, 683), (2048, 512), (512, 683)),      # short edge already 512: unchanged
    ((256, 256), (2048, 512), (512, 512)),      # short edge limits: x2
    ((300, 1500), (2048, 512), (410, 2048)),    # long edge limits: x 2048/1500, 300 * 1.3653 = 409.6 -> 410
    ((375, 500), (1024, 256), (256, 341)),      # 500 * 256/375 = 341.33 -> 341
    ((375, 500), (256, 1024), (256, 341)),      # the order of the two limits does not matter
])
def test_rescale_size_is_mmcvs_keep_ratio_rule(size, scale, expected):
    assert rescale_size(*size, scale) == expected


def test_random_resize_draws_the_ratio_uniformly_and_rescales_to_the_scaled_target():
    resize = RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0))
    image, mask = rgb(240, 320), np.random.default_rng(1).integers(0, 150, (240, 320)).astype(np.uint8)
    for seed in range(5):
        resize.set_random_seed(seed)
        out = resize(image=image, mask=mask, force_apply=True)
        ratio = random.Random(seed).random() * 1.5 + 0.5
        target = (int(2048 * ratio), int(512 * ratio))
        factor = min(target[0] / 320, target[1] / 240)
        h, w = int(240 * factor + 0.5), int(320 * factor + 0.5)
        assert out["image"].shape == (h, w, 3) and out["mask"].shape == (h, w)
        np.testing.assert_array_equal(out["image"], cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR))
        np.testing.assert_array_equal(out["mask"], cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST))


def test_random_resize_ratios_cover_half_to_twice():
    resize = RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0))
    resize.set_random_seed(0)
    heights = [resize(image=rgb(100, 100), force_apply=True)["image"].shape[0] for _ in range(200)]
    assert 256 <= min(heights) < 290 and 990 < max(heights) <= 1024


def test_keep_ratio_resize_is_the_test_time_resize_without_a_draw():
    out = KeepRatioResize(scale=(2048, 512))(image=rgb(256, 384), mask=np.zeros((256, 384), np.uint8))
    assert out["image"].shape == (512, 768, 3) and out["mask"].shape == (512, 768)


def mmseg_crop_box(rng, mask, crop, cat_max_ratio, ignore_index=255):
    """mmseg's RandomCrop.crop_bbox, with ``rng`` standing in for np.random (randint's upper bound inclusive)."""
    def generate():
        margin_h, margin_w = max(mask.shape[0] - crop[0], 0), max(mask.shape[1] - crop[1], 0)
        top = rng.randint(0, margin_h)
        return top, rng.randint(0, margin_w)

    box = generate()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            seg = mask[box[0]:box[0] + crop[0], box[1]:box[1] + crop[1]]
            labels, cnt = np.unique(seg, return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            box = generate()
    return box


def test_cat_max_crop_takes_the_box_mmseg_takes_for_the_same_draws():
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 34:] = 1          # class 1 only in the right-most 6 columns
    mask[:20, :30] = 255      # ignored pixels do not count
    crop = CatMaxRandomCrop(12, 12, cat_max_ratio=0.75)
    tops = set()
    for seed in range(40):
        crop.set_random_seed(seed)
        params = crop.get_params_dependent_on_data({"shape": mask.shape}, {"mask": mask})
        assert (params["top"], params["left"]) == mmseg_crop_box(random.Random(seed), mask, (12, 12), 0.75)
        tops.add(params["top"])
    assert len(tops) > 5


def test_cat_max_crop_takes_the_eleventh_box_unchecked_after_ten_failures():
    mask = np.zeros((30, 30), np.uint8)   # one class everywhere: every check fails
    crop = CatMaxRandomCrop(10, 10, cat_max_ratio=0.75)
    crop.set_random_seed(3)
    params = crop.get_params_dependent_on_data({"shape": mask.shape}, {"mask": mask})
    draws = random.Random(3)
    boxes = [(draws.randint(0, 20), draws.randint(0, 20)) for _ in range(11)]
    assert (params["top"], params["left"]) == boxes[-1]
    assert crop.py_random.getstate() == draws.getstate()   # exactly 11 boxes drawn


def test_cat_max_crop_keeps_a_short_side_whole_when_allowed():
    crop = CatMaxRandomCrop(32, 32, cat_max_ratio=0.75, allow_smaller=True)
    out = crop(image=rgb(20, 50), mask=np.zeros((20, 50), np.uint8), force_apply=True)
    assert out["image"].shape == (20, 32, 3) and out["mask"].shape == (20, 32)
    with pytest.raises(ValueError, match="PadIfNeeded before it.*allow_smaller"):
        CatMaxRandomCrop(32, 32)(image=rgb(20, 50), mask=np.zeros((20, 50), np.uint8))


def mmseg_photometric(bgr, brightness, contrast_first, contrast, saturation, hue):
    """mmseg's PhotoMetricDistortion.transform on a BGR image with its draws given (None: step not applied)."""
    def convert(img, alpha=1, beta=0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = bgr
    if brightness is not None:
        img = convert(img, beta=brightness)
    if contrast_first and contrast is not None:
        img = convert(img, alpha=contrast)
    if saturation is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 1] = convert(img[:, :, 1], alpha=saturation)
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if hue is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + hue) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not contrast_first and contrast is not None:
        img = convert(img, alpha=contrast)
    return img


@pytest.mark.parametrize("params", [
    {"brightness": 31.7, "contrast_first": True, "contrast": 1.43, "saturation": 0.52, "hue": -18},
    {"brightness": -20.2, "contrast_first": False, "contrast": 0.61, "saturation": 1.37, "hue": 17},
    {"brightness": None, "contrast_first": False, "contrast": 1.2, "saturation": None, "hue": 5},
    {"brightness": 3.5, "contrast_first": True, "contrast": None, "saturation": 1.1, "hue": None},
])
def test_photometric_distortion_is_mmsegs_on_the_same_draws(params):
    image = rgb(24, 32, seed=7)
    ours = PhotoMetricDistortion().apply(image, **params)
    theirs = mmseg_photometric(np.ascontiguousarray(image[:, :, ::-1]), **params)[:, :, ::-1]
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours, image)


def test_photometric_draws_follow_mmsegs_distributions():
    distortion = PhotoMetricDistortion()
    distortion.set_random_seed(0)
    draws = [distortion.get_params() for _ in range(4000)]
    for key in ("brightness", "contrast", "saturation", "hue"):
        applied = [d[key] for d in draws if d[key] is not None]
        assert 0.46 < len(applied) / len(draws) < 0.54, key
    assert 0.46 < np.mean([d["contrast_first"] for d in draws]) < 0.54
    brightness = [d["brightness"] for d in draws if d["brightness"] is not None]
    assert -32 <= min(brightness) < -31 and 31 < max(brightness) <= 32
    for key in ("contrast", "saturation"):
        values = [d[key] for d in draws if d[key] is not None]
        assert 0.5 <= min(values) < 0.52 and 1.48 < max(values) <= 1.5
    hues = {d["hue"] for d in draws if d["hue"] is not None}
    assert hues == set(range(-18, 18))   # numpy's randint(-18, 18): 18 itself is never drawn


def test_the_ade20k_pipeline_crops_pads_and_keeps_labels_aligned():
    cfg = compose_config(["augmentation=ade20k", "crop_size=[64,64]"])
    spec = OmegaConf.to_container(cfg.augmentation, resolve=True)
    assert [item["type"] for item in spec["train"]] == ["RandomResize", "CatMaxRandomCrop", "HorizontalFlip",
                                                         "PhotoMetricDistortion", "Normalize", "PadIfNeeded"]
    assert [item["type"] for item in spec["eval"]] == ["KeepRatioResize", "Normalize"]
    spec["train"][0]["scale"] = [128, 32]   # a small target so that some samples end smaller than the crop
    transform = build_transforms(spec["train"], seed=0)
    mask = np.kron(np.arange(12).reshape(3, 4), np.ones((8, 8))).astype(np.uint8)   # 24 x 32
    padded = 0
    for _ in range(20):
        image, target = transform(rgb(24, 32), mask)
        assert image.shape == (3, 64, 64) and target.shape == (64, 64)
        ignored = target == 255
        if ignored.any():
            padded += 1
            assert float(image[:, ignored].abs().max()) == 0.0   # padded after normalising: image 0, mask 255
    assert padded > 0
    eval_image, eval_mask = build_transforms(spec["eval"])(rgb(256, 384), np.zeros((256, 384), np.uint8))
    assert eval_image.shape == (3, 512, 768) and eval_mask.shape == (512, 768)
