"""validate_dataset and tools/check_dataset.py report every planted fault by path."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from segdense.data import FolderDataset, SyntheticShapes, VOCSegmentation, validate_dataset
from segdense.data.io import write_index_png
from tests.data_fixtures import make_folder, make_voc

ROOT = Path(__file__).resolve().parents[1]


def faulty_voc(root: Path) -> dict[str, list[str]]:
    """A VOC tree with one corrupt JPEG, one size mismatch, one out-of-range mask and one missing mask."""
    splits = make_voc(root)
    base = root / "VOC2012"
    train = splits["train"]
    (base / "JPEGImages" / f"{train[0]}.jpg").write_bytes(b"not a jpeg at all")
    write_index_png(base / "SegmentationClass" / f"{train[1]}.png", np.zeros((10, 10), np.uint8))
    bad = np.zeros((24, 32), np.uint8)
    bad[0, 0], bad[1, 1] = 21, 99
    write_index_png(base / "SegmentationClass" / f"{train[2]}.png", bad)
    val_jpeg = base / "JPEGImages" / f"{splits['val'][0]}.jpg"
    (base / "JPEGImages" / "2010_000005.jpg").write_bytes(val_jpeg.read_bytes())  # listed, but no mask
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(train + ["2010_000005"]) + "\n")
    return splits


def test_every_planted_fault_is_reported_by_path(tmp_path):
    splits = faulty_voc(tmp_path)
    report = validate_dataset(VOCSegmentation(tmp_path, "train"), sample=None)
    text = "\n".join(report.errors)
    assert not report.ok and len(report.errors) == 4
    assert f"{splits['train'][0]}.jpg: cannot be decoded" in text
    assert f"{splits['train'][1]}.jpg is 24x32 but its mask" in text and "is 10x10" in text
    assert f"{splits['train'][2]}.png: label values [21, 99] outside [0, 21)" in text
    assert "2010_000005.png: mask of image" in text


def test_clean_dataset_is_ok_with_class_frequency(tmp_path):
    make_voc(tmp_path)
    report = validate_dataset(VOCSegmentation(tmp_path, "val"), sample=None)
    assert report.ok and report.num_checked == 2
    frequency = report.class_frequency
    assert list(frequency) == VOCSegmentation.class_names
    assert abs(sum(frequency.values()) - 1) < 1e-9
    labelled = sum(int((m != 255).sum()) for m in (VOCSegmentation(tmp_path, "val").load_mask(i) for i in range(2)))
    assert int(report.class_pixels.sum()) == labelled and report.ignored_pixels > 0


def test_format_shows_errors_and_class_table(tmp_path):
    faulty_voc(tmp_path)
    text = validate_dataset(VOCSegmentation(tmp_path, "train"), sample=None).format()
    assert "4 error(s)" in text and "ERROR" in text and "aeroplane" in text and "tvmonitor" in text


def test_unpaired_folder_files_are_reported(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"])
    (tmp_path / "masks" / "b.png").unlink()
    (tmp_path / "images" / "c.png").unlink()
    report = validate_dataset(FolderDataset(tmp_path, class_names=["bg", "x", "y"]))
    assert sorted(report.errors) == sorted([f"{tmp_path / 'images' / 'b.png'}: image has no mask",
                                            f"{tmp_path / 'masks' / 'c.png'}: mask has no image"])


def test_sampling_checks_a_seeded_subset():
    dataset = SyntheticShapes("train", num_samples=40, image_size=32)
    report = validate_dataset(dataset, sample=10, seed=1)
    assert report.ok and report.num_checked == 10 and report.num_samples == 40
    assert np.array_equal(report.class_pixels, validate_dataset(dataset, sample=10, seed=1).class_pixels)


def test_num_classes_override_flags_higher_labels():
    report = validate_dataset(SyntheticShapes("val", num_samples=5, image_size=64), num_classes=3, sample=None)
    assert not report.ok and "outside [0, 3)" in report.errors[0] and "synthetic:val" in report.errors[0]


def load_tool():
    spec = importlib.util.spec_from_file_location("check_dataset_tool", ROOT / "tools/check_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


def test_check_tool_exits_nonzero_and_names_faults(tmp_path):
    splits = faulty_voc(tmp_path / "VOCdevkit")
    result = subprocess.run([sys.executable, str(ROOT / "tools/check_dataset.py"), "dataset=voc",
                             f"dataset.root={tmp_path / 'VOCdevkit'}", "+full=true"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{splits['train'][0]}.jpg: cannot be decoded" in result.stdout and "label values [21, 99]" in result.stdout
    # the per-band statistics leave the undecodable image out, and say so
    assert "1 file(s) could not be read and are left out of the statistics: " in result.stdout
    assert "Traceback" not in result.stderr
    # no Hydra output folder left behind: only the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit", "dataset_report"]


def test_check_tool_passes_a_clean_split(tmp_path, capsys):
    make_voc(tmp_path)
    assert load_tool().check_job(composed("dataset=voc", f"dataset.root={tmp_path}", "+split=val",
                                          f"+report_dir={tmp_path / 'report'}")) == 0
    out = capsys.readouterr().out
    assert "checked 2 of 2 samples: OK" in out and "background" in out


def test_check_tool_shows_layout_for_a_missing_root(tmp_path, capsys):
    cfg = composed("dataset=voc", f"dataset.root={tmp_path / 'nothing'}", "+report_dir=null")
    assert load_tool().check_job(cfg) == 2
    assert "Expected layout" in capsys.readouterr().err
