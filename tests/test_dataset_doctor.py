"""The dataset doctor: each wrongly encoded mask set is recognised, its fix is named, and the fix works."""
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from segdense.config.check_job import check_job
from segdense.data import FolderDataset
from segdense.data.doctor import diagnose, inspect_split
from segdense.data.voc import voc_palette

from train_utils import compose_config



def folder(root: Path, masks: list[np.ndarray], mode: str | None = None) -> Path:
    """images/i.png and masks/i.png for each mask (greyscale, or RGB arrays saved as RGB)."""
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*mask.shape[:2], 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8), mode).save(root / "masks" / f"{i}.png")
    return root


def blocks(values, size=(8, 12)) -> np.ndarray:
    """A mask of vertical bands holding ``values`` in turn."""
    mask = np.zeros(size, dtype=np.int64)
    for k, v in enumerate(np.array_split(np.arange(size[1]), len(values))):
        mask[:, v] = values[k]
    return mask


def findings_of(dataset, split="train"):
    d = inspect_split(dataset, split, range(len(dataset)))
    return diagnose([d], dataset.class_names, dataset.palette), d


def test_binary_0_255_masks_are_found_and_mask_colors_fixes_them(tmp_path):
    root = folder(tmp_path, [blocks([0, 255]), blocks([0, 0, 255])])
    findings, d = findings_of(FolderDataset(root, ["background", "object"]))
    assert [f.kind for f in findings] == ["binary_0_255"]
    assert "all 2 masks hold only 0 and 255" in findings[0].message and "'object'" in findings[0].message
    assert "dataset.mask_colors=[[0,0,0],[255,255,255]]" in findings[0].fix
    fixed = FolderDataset(root, ["background", "object"], mask_colors=[[0, 0, 0], [255, 255, 255]])
    assert findings_of(fixed)[0] == []
    assert np.unique(fixed.load_mask(0)).tolist() == [0, 1]


def test_rgb_masks_in_the_palette_colours_get_mask_colors_in_class_order(tmp_path):
    palette = voc_palette(3)
    rgb = np.array(palette, dtype=np.uint8)[blocks([2, 0, 1])]
    root = folder(tmp_path, [rgb, rgb[:, ::-1]], mode="RGB")
    findings, _ = findings_of(FolderDataset(root, ["a", "b", "c"]))
    assert [f.kind for f in findings] == ["rgb_masks"]
    assert "2 mask(s) are RGB images" in findings[0].message
    expected = "[" + ",".join(f"[{r},{g},{b}]" for r, g, b in palette) + "]"
    assert f"dataset.mask_colors={expected}" in findings[0].fix
    fixed = FolderDataset(root, ["a", "b", "c"], mask_colors=palette)
    assert findings_of(fixed)[0] == [] and fixed.load_mask(0)[0].tolist() == blocks([2, 0, 1])[0].tolist()


def test_rgb_masks_in_other_colours_list_the_colours_found_most_frequent_first(tmp_path):
    colours = np.array([(10, 20, 30), (200, 100, 50)], dtype=np.uint8)
    root = folder(tmp_path, [colours[blocks([0, 1, 1])]], mode="RGB")
    findings, _ = findings_of(FolderDataset(root, ["a", "b"]))
    assert "dataset.mask_colors=[[200,100,50],[10,20,30]]" in findings[0].fix
    assert "reorder them to class order" in findings[0].fix


def test_values_outside_the_classes_are_named_with_a_file(tmp_path):
    root = folder(tmp_path, [blocks([0, 1, 2]), blocks([0, 7, 9])])
    findings, _ = findings_of(FolderDataset(root, ["a", "b", "c"]))
    assert [f.kind for f in findings] == ["outside_values"]
    assert "7 in 1 mask(s), e.g. " in findings[0].message and str(root / "masks" / "1.png") in findings[0].message
    assert "9 in 1 mask(s)" in findings[0].message and "up to 9" in findings[0].fix


def test_one_based_labels_with_zero_unlabelled_get_reduce_zero_label(tmp_path):
    root = folder(tmp_path, [blocks([0, 1, 2, 3]), blocks([1, 3])])
    findings, _ = findings_of(FolderDataset(root, ["a", "b", "c"]))
    assert [f.kind for f in findings] == ["zero_label"]
    assert "look numbered from 1 with 0 = 'unlabelled'" in findings[0].message
    assert findings[0].fix.startswith("dataset.reduce_zero_label=true")
    fixed = FolderDataset(root, ["a", "b", "c"], reduce_zero_label=True)
    assert findings_of(fixed)[0] == []
    assert np.unique(fixed.load_mask(0)).tolist() == [0, 1, 2, 255]


def test_a_class_zero_named_unlabelled_without_any_ignore_pixel_is_a_warning(tmp_path):
    root = folder(tmp_path, [blocks([0, 1, 2])])
    findings, _ = findings_of(FolderDataset(root, ["void", "b", "c"]))
    assert [(f.kind, f.severity) for f in findings] == [("zero_label", "warning")]
    assert "class 0 is named 'void'" in findings[0].message


def test_classes_missing_from_a_split_are_listed_per_split(tmp_path):
    root = folder(tmp_path, [blocks([0, 1]), blocks([0, 1, 2])])
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("0\n")
    (root / "splits" / "val.txt").write_text("1\n")
    train, val = (FolderDataset(root, ["a", "b", "c"], split=s) for s in ("train", "val"))
    diagnoses = [inspect_split(train, "train", [0]), inspect_split(val, "val", [0])]
    findings = diagnose(diagnoses, train.class_names)
    assert [(f.kind, f.split) for f in findings] == [("missing_classes", "train")]
    assert "never occur in the 1 mask(s) read: c" in findings[0].message


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def tool(*args, cwd, monkeypatch, capsys) -> Run:
    """``python tools/check_dataset.py ARGS`` in ``cwd``, in this process: the job the tool runs, on the config the
    tool composes (the command line itself runs in test_data_validate.py)."""
    monkeypatch.chdir(cwd)
    status = check_job(compose_config(args))
    out = capsys.readouterr()
    return Run(status, out.out, out.err)


def test_tool_prints_the_fix_frequencies_and_weights_and_writes_the_report(tmp_path, monkeypatch, capsys):
    root = folder(tmp_path / "data", [blocks([0, 255]), blocks([0, 0, 255]), blocks([0, 255, 255])])
    run = tool("dataset=folder", f"dataset.root={root}", "dataset.train_split=all", "dataset.val_split=all",
               "+splits=[all]", "+report_dir=rep", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert run.returncode == 1, run.stderr
    assert "fix: read 255 as class 1: dataset.mask_colors=[[0,0,0],[255,255,255]]" in run.stdout
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "binary_0_255" in report and "![class frequencies](class_frequency.png)" in report
    assert "| 0 | background | 100.00% | 3/3 (100%) |" in report  # 255 is ignored: only class 0 is labelled
    png = Image.open(tmp_path / "rep" / "class_frequency.png")
    assert png.width > 300 and png.height > 300

    fixed = tool("dataset=folder", f"dataset.root={root}", "dataset.train_split=all", "dataset.val_split=all",
                 "+splits=[all]", "+report_dir=rep", "dataset.mask_colors=[[0,0,0],[255,255,255]]", cwd=tmp_path,
                 monkeypatch=monkeypatch, capsys=capsys)
    assert fixed.returncode == 0, fixed.stdout
    # pixels: background 8*(6+8+4)=144, object 8*(6+4+8)=144 -> equal frequencies, weights 1 and 1
    assert "loss.class_weight=[1,1]" in fixed.stdout
    assert "| 1 | foreground | 50.00% | 3/3 (100%) |" in (tmp_path / "rep" / "report.md").read_text()


def test_tool_never_overwrites_a_report_md_it_did_not_write(tmp_path, monkeypatch, capsys):
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.md").write_text("my notes\n")
    run = tool("dataset.num_samples=4", "dataset.image_size=32", "+report_dir=rep", cwd=tmp_path,
               monkeypatch=monkeypatch, capsys=capsys)
    assert run.returncode == 2 and "is not a dataset report" in run.stderr
    assert (tmp_path / "rep" / "report.md").read_text() == "my notes\n"


def test_multilabel_masks_count_each_class_band(tmp_path, monkeypatch, capsys):
    import tifffile

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):  # 4x6, labels overlap; (0, 0) ignored in every band; class c never labelled 1
        Image.fromarray(np.full((4, 6, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((4, 6, 3), np.uint8)
        mask[:, :3, 0] = 1
        mask[:2, :, 1] = i
        mask[0, 0] = 255
        tifffile.imwrite(root / "masks" / f"{i}.tif", mask)
    run = tool("dataset=folder", f"dataset.root={root}", "dataset.class_names=[a,b,c]", "dataset.multilabel=true",
               "task=multilabel", "dataset.train_split=all", "dataset.val_split=all", "+splits=[all]",
               "+report_dir=rep", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert run.returncode == 0, run.stdout + run.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    # a: 11 of the 23 labelled pixels per image; b: 11 of 23 in image 1 only; of 46 labelled pixels of each band
    assert "| 0 | a | 47.83% | 2/2 (100%) |" in report
    assert "| 1 | b | 23.91% | 1/2 (50%) |" in report
    assert "| 2 | c | 0.00% | 0/2 (0%) |" in report
    assert "binary_0_255" not in report and "outside" not in run.stdout
    assert "never occur in the 2 mask(s) read: c" in run.stdout
