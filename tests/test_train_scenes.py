"""Training on large scenes end to end: docs/data.md's dataset=scenes command run as written on two small tiled
TIFF scenes (tiny model appended), and a killed run resumed with exactly the uninterrupted weights."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segdense.config.train_job import train
from segdense.runtime import load_checkpoint
from test_data_scenes import write_scenes
from test_train import Crash, crash_at
from train_utils import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def two_scenes(root):
    write_scenes(root, {"north": (300, 260), "south": (200, 330)}, bands=4, num_classes=2)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("north\n")
    (root / "splits" / "val.txt").write_text("south\n")
    return root


def tiny(*extra):
    """TINY's model and schedule on 64x64 windows (the dataset keys are the scenes' own)."""
    return [o for o in TINY if not o.startswith(("dataset.", "crop_size"))] + [
        "dataset.patch_size=64", "crop_size=[64,64]", *extra]


@pytest.mark.slow
def test_the_documented_scenes_command_trains_on_two_tiled_scenes(tmp_path):
    text = (ROOT / "docs" / "data.md").read_text()
    command = re.search(r"tests/test_train_scenes.py.*?```bash\n(.*?)\n```", text, re.S).group(1)
    args = command.replace("data/scenes", str(two_scenes(tmp_path / "scenes"))).split()
    assert args[:2] == ["python", "tools/train.py"]
    args = [a.strip("'") for a in args[1:] if not a.startswith("hydra.run.dir")]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, *args, *tiny(f"hydra.run.dir={tmp_path / 'run'}")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # 200x330 validation scene, 64x64 grid: 4 rows x 6 columns of windows
    assert "scenes: 1000 train / 24 val images" in run.stdout + run.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 4


@pytest.mark.parametrize("sampling", ["random", "balanced"])
def test_a_resumed_scenes_run_ends_with_exactly_the_uninterrupted_weights(tmp_path, sampling):
    root = two_scenes(tmp_path / "scenes")
    overrides = tiny("dataset=scenes", f"dataset.root={root}", "dataset.class_names=[background,building]",
                     f"dataset.sampling.train={sampling}", "dataset.normalize={scale:0.00025}", "augmentation=flip",
                     "iterations=4", "val_interval=4", "deterministic=true")
    train(compose_config(overrides), run_dir=tmp_path / "a")
    with pytest.raises(Crash):
        train(compose_config(overrides), run_dir=tmp_path / "b", hooks=[crash_at(3)])
    train(compose_config(overrides + ["resume=auto"]), run_dir=tmp_path / "b")
    a, b = (load_checkpoint(tmp_path / run / "checkpoints/last.pt")["model"] for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
