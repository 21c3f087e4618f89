"""docs/data.md's "your own data" commands, run as written on a tiny 4-band 16-bit folder (with a tiny model and
two iterations appended)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np
import tifffile
from PIL import Image

from train_utils import TINY

ROOT = Path(__file__).resolve().parents[1]


def documented_commands() -> list[str]:
    text = (ROOT / "docs" / "data.md").read_text()
    section = text[text.index("tests/test_docs_own_data.py"):]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)[:2]
    return [block.replace("\\\n", " ").strip() for block in blocks]


@pytest.mark.slow
def test_the_documented_4_band_16_bit_commands_run(tmp_path):
    root = tmp_path / "satellite"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 4000, (4, 40, 40), dtype=np.uint16)
        tifffile.imwrite(root / "images" / f"t{i}.tif", image, photometric="minisblack", planarconfig="separate")
        Image.fromarray((image[3] > 2000).astype(np.uint8)).save(root / "masks" / f"t{i}.png")
    check, train = documented_commands()
    assert check.startswith("python tools/check_dataset.py") and train.startswith("python tools/train.py")
    tiny = [o for o in TINY if not o.startswith(("dataset.", "crop_size"))] + [
        "dataset.train_split=all", "dataset.val_split=all", "crop_size=[32,32]", "iterations=2", "batch_size=2",
        f"hydra.run.dir={tmp_path / 'run'}"]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    outputs = []
    for command, extra in ((check, ["dataset.train_split=all", "dataset.val_split=all", "+report_dir=null"]),
                           (train, tiny)):
        args = [a.strip("'") for a in command.replace("/data/satellite", str(root)).split()[1:]]
        run = subprocess.run([sys.executable, *args, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**env, "HOME": str(tmp_path)})
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        outputs.append(run.stdout)
    assert "dataset.normalize: {mean: [" in outputs[0]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
