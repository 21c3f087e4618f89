"""Augmentations on any band count and dtype: geometric transforms move every band's values unchanged; the
photometric ones made for 8-bit RGB refuse other images with one error naming the transform and the bands."""
import numpy as np
import pytest

from segdense.data import build_transforms
from segdense.readers import ImageReadError

GEOMETRIC = [
    {"type": "HorizontalFlip", "p": 1.0},
    {"type": "PadIfNeeded", "min_height": 40, "min_width": 40, "border_mode": 0, "fill": 0, "fill_mask": 255,
     "position": "top_left"},
    {"type": "RandomCrop", "height": 24, "width": 24},
    {"type": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0, "interpolation": 0},
    {"type": "CatMaxRandomCrop", "height": 16, "width": 16},
]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("bands", [1, 5])
def test_geometric_transforms_keep_every_bands_values_and_dtype(dtype, bands):
    rng = np.random.default_rng(bands)
    # Each pixel's bands hold its position (and the band), so any geometric move keeps them consistent.
    yy, xx = np.mgrid[:32, :32]
    image = np.stack([yy * 32 + xx + 1024 * b for b in range(bands)], axis=-1).astype(dtype) * 7
    mask = (rng.random((32, 32)) * 3).astype(np.uint8)
    transform = build_transforms(GEOMETRIC, seed=0, normalize={"scale": 1})
    out, out_mask = transform(image, mask)
    assert out.shape[0] == bands
    out = out.numpy()
    valid = out_mask.numpy() != 255
    position = out[0][valid] / 7
    for b in range(bands):  # nearest-neighbour moves: band b is still band 0 + 1024 b, exactly
        assert np.array_equal(out[b][valid] / 7, position + 1024 * b)
    assert set(np.unique(position)) <= set(range(32 * 32))  # no value was interpolated or truncated


@pytest.mark.parametrize("step", [
    {"type": "ColorJitter"}, {"type": "HueSaturationValue"}, {"type": "PhotoMetricDistortion"},
])
@pytest.mark.parametrize("bands, dtype", [(4, np.uint16), (1, np.uint8), (3, np.float32)])
def test_rgb_photometric_transforms_refuse_other_images_naming_transform_and_bands(step, bands, dtype):
    transform = build_transforms([step], normalize={"scale": 1})
    with pytest.raises(ImageReadError, match=rf"{step['type']} works on 8-bit RGB images only, but this image has "
                                             rf"{bands} band\(s\) of {np.dtype(dtype).name}"):
        transform(np.zeros((8, 8, bands), dtype), np.zeros((8, 8), np.uint8))


def test_rgb_photometric_transforms_still_run_on_8_bit_rgb():
    transform = build_transforms([{"type": "PhotoMetricDistortion"}, {"type": "Normalize"}], seed=0)
    out, _ = transform(np.full((8, 8, 3), 100, np.uint8), np.zeros((8, 8), np.uint8))
    assert out.shape == (3, 8, 8)
