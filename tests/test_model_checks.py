"""Model options that cannot go together are one error line (exit status 2) before anything is built: an explicit
output_stride for a backbone without one, a crop or image size below the backbone's smallest input."""
import runpy
import sys
from pathlib import Path

import pytest

from segdense.config.model_checks import minimum_input_size

from test_eval_bad_input import fails_with
from train_utils import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]
FC56 = [o for o in TINY if not o.startswith(("backbone", "head"))] + ["backbone=fcdensenet56", "head=tiramisu"]


def refused_before_building(overrides, tmp_path, capsys, monkeypatch) -> str:
    """The error line of train(cfg); fails if the datasets or the model were built, or a run folder made."""
    from segdense.config import train_job

    def built(*args, **kwargs):
        raise AssertionError("built something before refusing the configuration")

    monkeypatch.setattr(train_job, "build_datasets", built)
    monkeypatch.setattr(train_job, "training_model", built)
    err = fails_with(lambda cfg: train_job.train(cfg, run_dir=tmp_path / "run"), compose_config(overrides), capsys)
    assert "\n" not in err and not (tmp_path / "run").exists()
    return err


def test_an_output_stride_the_backbone_cannot_take_is_refused(tmp_path, capsys, monkeypatch):
    err = refused_before_building(FC56 + ["output_stride=8"], tmp_path, capsys, monkeypatch)
    assert err.startswith("error: output_stride=8 does not apply to backbone fcdensenet56, which takes no "
                          "output_stride") and "densenet121" in err


def test_the_default_output_stride_with_an_fc_densenet_is_accepted(tmp_path, capsys, monkeypatch):
    from segdense.config.model_checks import check_model_inputs

    check_model_inputs(compose_config(FC56))  # output_stride: 16 from conf/config.yaml, not given by the user
    with pytest.raises(Exception, match="output_stride=16 does not apply"):
        check_model_inputs(compose_config(FC56), command_line={"output_stride"})


def test_an_explicit_default_output_stride_on_the_command_line_is_refused(tmp_path, monkeypatch, capsys):
    # Only the command line tells output_stride=16 from the default: tools/train.py run in this process.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tools" / "train.py"), *FC56, "output_stride=16",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(sys.argv[0], run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output_stride=16 does not apply to backbone fcdensenet56") and "\n" not in err


@pytest.mark.parametrize("override, expected", [
    ("dataset.image_size=24", "error: dataset.image_size=24 is too small for backbone fcdensenet56, whose input "
                              "must be at least 32x32 pixels; use dataset.image_size of at least 32"),
    ("crop_size=[16,64]", "error: crop_size=[16, 64] is too small for backbone fcdensenet56, whose input must be at "
                          "least 32x32 pixels; use crop_size of at least 32"),
])
def test_an_input_below_the_backbones_smallest_is_refused(override, expected, tmp_path, capsys, monkeypatch):
    assert refused_before_building(FC56 + [override], tmp_path, capsys, monkeypatch) == expected


def test_the_smallest_input_is_the_backbones_own():
    assert minimum_input_size({"name": "fcdensenet56", "pretrained": "missing.pt"}) == 32  # no file is read
    assert minimum_input_size({"name": "fcdensenet_custom", "down_blocks": [2, 2, 2]}) == 8
    assert minimum_input_size({"name": "densenet121", "output_stride": 8}) == 8
    assert minimum_input_size({"name": "densenet_custom", "output_stride": 32}) == 32
