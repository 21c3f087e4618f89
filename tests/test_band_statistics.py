"""tools/check_dataset.py on images of any band count: per-band mean/std/percentiles in one pass, printed as the
config lines to paste, and the doctor's image findings."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from segdense.data import FolderDataset
from segdense.data.band_statistics import band_statistics

ROOT = Path(__file__).resolve().parents[1]


def write(root, images):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for name, array in images.items():
        tifffile.imwrite(root / "images" / f"{name}.tif", np.moveaxis(array, -1, 0), photometric="minisblack",
                         planarconfig="separate")
        Image.fromarray(np.zeros(array.shape[:2], np.uint8)).save(root / "masks" / f"{name}.png")
    return FolderDataset(root, ["a", "b"])


def test_mean_std_and_percentiles_equal_numpy_over_all_pixels(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"s{i}": rng.integers(0, 4000, (20, 30, 4), dtype=np.uint16) for i in range(3)}
    stats = band_statistics(write(tmp_path, images), range(3))
    every = np.concatenate([a.reshape(-1, 4) for a in images.values()]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, every.std(0), rtol=1e-9)
    np.testing.assert_allclose(stats.percentiles(), np.percentile(every, [2, 98], axis=0))  # <= 4096 px: all kept
    assert stats.findings() == []


def test_the_doctor_finds_under_256_constant_bands_nan_and_band_counts(tmp_path):
    dark = np.zeros((8, 8, 3), np.uint16) + np.arange(3, dtype=np.uint16) * 7
    dark[0, 0] = [1, 100, 14]
    images = {"a_dark": dark, "b_other": np.ones((8, 8, 2), np.uint16)}
    stats = band_statistics(write(tmp_path, images), range(2))
    kinds = {kind: seen for kind, seen, _ in stats.findings()}
    assert "b_other.tif (2)" in kinds["band_count"] and "a_dark.tif" in kinds["sixteen_bit_under_256"]
    floats = np.random.default_rng(1).random((8, 8, 2)).astype(np.float32)
    floats[..., 1] = 5.0
    floats[2, 3, 0] = np.nan
    stats = band_statistics(write(tmp_path / "f", {"f": floats}), range(1))
    kinds = {kind: seen for kind, seen, _ in stats.findings()}
    assert kinds["constant_band"].startswith("band 1 is constant (5)") and "(1 pixels)" in kinds["nan"]


def test_check_dataset_prints_the_normalize_lines_to_paste(tmp_path):
    rng = np.random.default_rng(2)
    write(tmp_path / "data", {f"s{i}": rng.integers(100, 4000, (16, 16, 4), dtype=np.uint16) for i in range(2)})
    run = subprocess.run([sys.executable, "tools/check_dataset.py", "dataset=folder",
                          f"dataset.root={tmp_path / 'data'}", "dataset.class_names=[a,b]", "dataset.train_split=all",
                          "dataset.val_split=all", "+report_dir=null"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert "per-band statistics of the 2 all image(s) (4 band(s)" in run.stdout, run.stderr
    line = next(l for l in run.stdout.splitlines() if l.strip().startswith("dataset.normalize: {mean:"))
    assert line.count(",") == 7  # four means and four stds
