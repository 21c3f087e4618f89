"""Predictor.window_batch (streamed scenes' windows through the eval pipeline's lookup table) against the pipeline
run on each window, the reference: bit for bit for every pointwise normalisation, and the pipeline itself where a
pixel's value depends on more than its own."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from segdense.data import build_transforms
from segdense.inference import Predictor
from segdense.readers import ImageReadError

PIPELINES = {
    "imagenet uint8": ([{"type": "Normalize"}], np.uint8, 3),
    "per-band mean/std uint16": ([{"type": "NormalizeBands", "mean": [900.0, 1200.5, 40.0, 3000.0],
                                   "std": [300.0, 410.0, 25.5, 999.0]}], np.uint16, 4),
    "scale uint16": ([{"type": "NormalizeBands", "scale": "1/65535"}], np.uint16, 1),
    "percentile clipping uint16": ([{"type": "NormalizeBands", "low": [10.0, 50.0], "high": [4000.0, 2500.0]}],
                                   np.uint16, 2),
    "clipping then mean/std uint8": ([{"type": "NormalizeBands", "low": [5.0, 7.0, 9.0], "high": [250.0, 200.0, 240.0],
                                       "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}], np.uint8, 3),
}


def windows(dtype, bands, count=3, size=(17, 23), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, np.iinfo(dtype).max, (*size, bands), dtype=dtype, endpoint=True) for _ in range(count)]


@pytest.mark.parametrize("name", PIPELINES)
def test_lookup_table_equals_the_pipeline_on_every_value(name):
    spec, dtype, bands = PIPELINES[name]
    transform = build_transforms(spec)
    table = transform.lookup_table(dtype, bands)
    assert table is not None and table.shape == (bands, np.iinfo(dtype).max + 1)
    for image in windows(dtype, bands):
        expected, _ = transform(image, np.zeros(image.shape[:2], np.uint8))
        got = np.stack([np.take(table[b], image[..., b]) for b in range(bands)])
        assert np.array_equal(got, expected.numpy())  # bit for bit


@pytest.mark.parametrize("spec,dtype", [([{"type": "Normalize", "normalization": "image"}], np.uint8),
                                        ([{"type": "Normalize"}, {"type": "GaussianBlur", "p": 1.0}], np.uint8),
                                        ([{"type": "NormalizeBands", "scale": 0.5}], np.float32),
                                        ([{"type": "NormalizeBands", "scale": 0.5}], np.int16)])
def test_no_table_where_a_pixel_depends_on_more_than_its_value_or_the_dtype_has_too_many(spec, dtype):
    assert build_transforms(spec).lookup_table(np.dtype(dtype), 3) is None


def predictor(in_channels=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(in_channels, 2, 3, padding=1))
    model.model_config = {"num_classes": 2}
    return Predictor.from_model(model, device="cpu")


def test_window_batch_equals_the_windows_preprocessed_one_by_one():
    p = predictor()
    batch = p.window_batch(windows(np.uint8, 3))
    assert p._tables[(np.dtype(np.uint8).str, 3)] is not None  # the table was used
    expected = torch.stack([p.preprocess(w)[1] for w in windows(np.uint8, 3)])
    assert torch.equal(batch, expected)
    assert torch.equal(p.logits_of_batch(batch), torch.stack(p.logits_batch(windows(np.uint8, 3))))


def test_window_batch_refuses_what_the_pipeline_refuses():
    p = predictor()
    with pytest.raises(ImageReadError, match="uint16 image"):
        p.window_batch(windows(np.uint16, 3))
