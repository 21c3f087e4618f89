"""Bad input to the evaluation, inference and export tools: one clear message, exit status 2, nothing half-written."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segdense.config.cli import run_tool
from segdense.config.eval_job import evaluate_job
from segdense.config.export_job import export_job
from segdense.config.infer_job import infer_job
from segdense.inference import CheckpointError, load_bundle

from infer_fixtures import write_image
from train_utils import CONF

ROOT = Path(__file__).resolve().parents[1]


def compose(name, overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))


def fails_with(job, cfg, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_tool(job, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.fixture
def corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    return path


@pytest.fixture
def mismatched_checkpoint(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model_config"]["backbone"]["growth_rate"] = 12  # weights were trained with 8
    path = tmp_path / "other_config.pt"
    torch.save(state, path)
    return path


def test_eval_tool_reports_a_missing_checkpoint_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "eval.py"), f"checkpoint={tmp_path / 'nope.pt'}",
                          f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == f"error: checkpoint not found: {tmp_path / 'nope.pt'}"
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["eval", "infer", "export"])
def test_a_corrupt_checkpoint_is_named(name, corrupt_checkpoint, tmp_path, capsys):
    job = {"eval": evaluate_job, "infer": infer_job, "export": export_job}[name]
    write_image(tmp_path / "x.png", np.zeros((40, 40, 3), np.uint8))
    extra = {"eval": [f"output_dir={tmp_path / 'out'}"],
             "infer": [f"input={tmp_path / 'x.png'}", f"output={tmp_path / 'out'}"],
             "export": ["format=safetensors", f"output={tmp_path / 'out' / 'm.safetensors'}"]}[name]
    err = fails_with(job, compose(name, [f"checkpoint={corrupt_checkpoint}", *extra]), capsys)
    assert str(corrupt_checkpoint) in err and "could not be read" in err
    assert not (tmp_path / "out").exists()  # nothing created before the checkpoint was known to be good


def test_a_checkpoint_whose_weights_do_not_fit_its_model_config_is_refused(mismatched_checkpoint, tmp_path, capsys):
    err = fails_with(evaluate_job, compose("eval", [f"checkpoint={mismatched_checkpoint}", f"output_dir={tmp_path}"]),
                     capsys)
    assert "do not fit the model its model_config describes" in err and "shape mismatch" in err
    assert "another model configuration" in err and not (tmp_path / "metrics.json").exists()


def test_a_dataset_with_other_classes_than_the_checkpoint_is_refused(tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    write_image(root / "images" / "a.png", np.zeros((40, 40, 3), np.uint8))
    write_image(root / "masks" / "a.png", np.zeros((40, 40), np.uint8))
    cfg = compose("eval", [f"checkpoint={tiny_checkpoint}", "dataset=folder", f"dataset.root={root}",
                           "dataset.class_names=[cat,dog]", "split=all", f"output_dir={tmp_path / 'out'}",
                           "progress=false"])
    err = fails_with(evaluate_job, cfg, capsys)
    assert "dataset 'folder' has 2 classes but the checkpoint" in err and "predicts 5" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("name", ["eval", "infer"])
def test_an_unwritable_output_directory_is_named(name, tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a directory cannot be created below a file, whatever the user's permissions
    write_image(tmp_path / "x.png", np.zeros((40, 40, 3), np.uint8))
    overrides = ([f"output_dir={blocker / 'out'}", "progress=false", "num_workers=0"] if name == "eval"
                 else [f"input={tmp_path / 'x.png'}", f"output={blocker / 'out'}"])
    job = evaluate_job if name == "eval" else infer_job
    err = fails_with(job, compose(name, [f"checkpoint={tiny_checkpoint}", *overrides]), capsys)
    assert f"directory {blocker / 'out'} is not writable" in err


def test_safetensors_without_segdense_metadata_or_truncated_are_explained(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="without segdense metadata"):
        load_bundle(tmp_path / "plain.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "plain.safetensors").read_bytes()[:20])
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        load_bundle(tmp_path / "cut.safetensors")


def test_infer_with_no_matching_input_is_one_error(tiny_checkpoint, tmp_path, capsys):
    cfg = compose("infer", [f"checkpoint={tiny_checkpoint}", f"input={tmp_path / '*.png'}", f"output={tmp_path / 'o'}"])
    assert "matches no files" in fails_with(infer_job, cfg, capsys)
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_without_its_eval_pipeline_warns_that_imagenet_normalisation_is_assumed(tiny_checkpoint,
                                                                                            tmp_path, caplog):
    from segdense.inference.loading import DEFAULT_EVAL_PIPELINE

    with caplog.at_level("WARNING", logger="segdense.inference"):
        recorded = load_bundle(tiny_checkpoint)
    assert "eval pipeline" not in caplog.text
    state = torch.load(tiny_checkpoint, weights_only=True)
    del state["config"]["augmentation"]
    path = tmp_path / "no_pipeline.pt"
    torch.save(state, path)
    with caplog.at_level("WARNING", logger="segdense.inference"):
        bundle = load_bundle(path)
    assert f"{path} does not record its eval pipeline" in caplog.text and "ImageNet's mean and std" in caplog.text
    assert bundle.eval_pipeline == DEFAULT_EVAL_PIPELINE and recorded.eval_pipeline != []
