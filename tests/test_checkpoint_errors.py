"""A file that is not a segdense checkpoint gives one error line naming it and what was expected, never torch's
advice to load it with weights_only=False."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import segdense
from segdense.errors import CheckpointError
from segdense.runtime import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = "expected a segdense checkpoint such as outputs/<run>/checkpoints/best.pt"


def _not_a_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text((ROOT / "README.md").read_text())
    return path


def _torchvision_weights(tmp_path: Path) -> Path:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _truncated(tmp_path: Path) -> Path:
    whole, path = tmp_path / "whole.pt", tmp_path / "best.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "model_config": {"num_classes": 2}}, whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path


@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("foreign")
    return {make.__name__: make(folder) for make in (_not_a_checkpoint, _torchvision_weights, _truncated)}


@pytest.mark.parametrize("loader", [segdense.load_model, segdense.Predictor.from_checkpoint, load_checkpoint],
                         ids=["load_model", "Predictor.from_checkpoint", "load_checkpoint"])
@pytest.mark.parametrize("kind, says", [
    ("_not_a_checkpoint", "is not a checkpoint (not a PyTorch file)"),
    ("_torchvision_weights", "holds a bare state_dict (122 tensors, the first 'conv1.weight'), not a segdense checkpoint"),
    ("_truncated", "could not be read: it is truncated or corrupt"),
], ids=["text file", "torchvision state_dict", "truncated"])
def test_a_file_that_is_no_segdense_checkpoint_is_named_with_what_was_expected(loader, kind, says, foreign_files):
    path = foreign_files[kind]
    with pytest.raises(CheckpointError) as err:
        loader(path)
    message = str(err.value)
    assert message.startswith(f"{path} {says}")
    assert EXPECTED in message
    assert "\n" not in message and "weights_only" not in message
    assert err.value.__cause__ is None  # torch's text is not chained into it


def test_export_tool_says_in_one_line_that_readme_is_not_a_checkpoint():
    done = subprocess.run([sys.executable, "tools/export.py", "checkpoint=README.md"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert lines == [f"error: README.md is not a checkpoint (not a PyTorch file); {EXPECTED}, or a .safetensors "
                     "export of one (tools/export.py format=safetensors)"]
