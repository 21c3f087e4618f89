"""The binary and multi-label commands of docs/data.md, run as written (plus tiny-model overrides) on tiny
generated folders: they train, store the task, and predict files of the documented kind."""
import re
import shlex
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from train_utils import TINY, compose_config
from test_infer import compose_infer

ROOT = Path(__file__).resolve().parents[1]
SMALL = [o for o in TINY if not o.startswith(("dataset.", "crop_size"))] + [
    "crop_size=[32,32]", "batch_size=2", "val_batch_size=2", "iterations=2", "val_interval=2",
    "checkpoint_interval=2"]


def documented_commands():
    text = (ROOT / "docs" / "data.md").read_text()
    blocks = re.findall(r"<!-- commands run by tests/test_docs_tasks.py[^>]*-->\n```bash\n(.*?)```", text, re.S)
    return [[shlex.split(line) for line in block.strip().splitlines()] for block in blocks]


def make_cells(root):
    rng = np.random.default_rng(0)
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True)
    for i in range(4):
        gray = rng.integers(0, 120, (32, 40), dtype=np.uint8)
        mask = np.zeros((32, 40), np.uint8)
        mask[8 + i:20 + i, 10:24] = 255
        gray[mask == 255] += 120
        Image.fromarray(gray, "L").save(root / "images" / f"c{i}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"c{i}.png")
    (root / "splits" / "train.txt").write_text("c0\nc1\nc2\n")
    (root / "splits" / "val.txt").write_text("c3\n")


def make_tissue(root):
    rng = np.random.default_rng(1)
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(root / "images" / f"t{i}.png")
        tifffile.imwrite(root / "masks" / f"t{i}.tif", rng.integers(0, 2, (32, 40, 3)).astype(np.uint8))
    (root / "splits" / "train.txt").write_text("t0\nt1\nt2\n")
    (root / "splits" / "val.txt").write_text("t3\n")


def run(commands, tmp_path, monkeypatch):
    """Run ``python tools/train.py ...`` and ``python tools/infer.py ...`` in ``tmp_path`` as the tools would."""
    from segdense.config.infer_job import infer_job
    from segdense.config.train_job import train

    monkeypatch.chdir(tmp_path)
    (train_cmd, infer_cmd) = commands
    assert train_cmd[:2] == ["python", "tools/train.py"] and infer_cmd[:2] == ["python", "tools/infer.py"]
    overrides = [o for o in train_cmd[2:] if not o.startswith("hydra.run.dir=")]
    run_dir = next(o.split("=", 1)[1] for o in train_cmd[2:] if o.startswith("hydra.run.dir="))
    train(compose_config(SMALL + overrides), run_dir=tmp_path / run_dir)
    report = infer_job(compose_infer(infer_cmd[2:] + ["progress=false", "device=cpu"]))
    assert report.ok and len(report.written) == 4
    return tmp_path


def test_the_documented_binary_commands_train_and_predict_0_1_masks(tmp_path, monkeypatch):
    from segdense.runtime import load_checkpoint

    binary, _ = documented_commands()
    make_cells(tmp_path / "data" / "cells")
    run(binary, tmp_path, monkeypatch)
    state = load_checkpoint(tmp_path / "runs" / "cells" / "checkpoints" / "best.pt")
    assert state["task"]["name"] == "binary" and state["task"]["threshold"] == state["history"][-1]["threshold"]
    prediction = np.asarray(Image.open(tmp_path / "predictions" / "cells" / "c0.png"))
    assert prediction.shape == (32, 40) and set(np.unique(prediction)) <= {0, 1}


def test_the_documented_multilabel_commands_train_and_predict_band_tiffs(tmp_path, monkeypatch):
    _, multilabel = documented_commands()
    make_tissue(tmp_path / "data" / "tissue")
    run(multilabel, tmp_path, monkeypatch)
    bands = tifffile.imread(tmp_path / "predictions" / "tissue" / "t0.tif")
    assert bands.shape == (32, 40, 3) and set(np.unique(bands)) <= {0, 1}
