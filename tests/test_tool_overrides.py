"""Every tool answers an unknown command-line key with the valid keys, exit status 2 and no traceback."""
import runpy
import sys
from pathlib import Path

import pytest

from segdense.config.overrides import check_overrides
from segdense.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def run_tool_main(tool, *args, monkeypatch):
    """``python tools/<tool>.py ARGS`` run in this process (its ``__main__`` block, as the command line runs it);
    the exit status. The unknown keys are refused before Hydra starts, so nothing of Hydra's runs here."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tools" / f"{tool}.py"), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(sys.argv[0], run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize("tool, args, wrong, hint, valid", [
    ("eval", ["checkpoint=x.pt", "output=y"], "output", "output_dir", "save_predictions"),
    ("infer", ["checkpoint=x.pt", "input=a", "output=b", "sav_proba=true"], "sav_proba", "save_proba", "overlay"),
    ("export", ["checkpoint=x.pt", "output=m.onnx", "+verfy=false"], "verfy", "verify", "tolerance"),
    ("train", ["itrations=3"], "itrations", "iterations", "val_interval"),
])
def test_unknown_key_names_the_valid_keys_and_exits_2(tool, args, wrong, hint, valid, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_tool_main(tool, *args, monkeypatch=monkeypatch) == 2
    stderr = capsys.readouterr().err
    assert f"unknown key {wrong!r} (did you mean {hint!r}?)" in stderr
    assert valid in stderr.split("valid keys:")[1]
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr
    assert not list(tmp_path.iterdir())  # nothing written (no outputs/ folder)


def test_known_keys_groups_and_hydra_overrides_pass():
    check_overrides("eval", ["checkpoint=x", "dataset=voc", "dataset.root=/d", "scales=[1.0,1.5]",
                             "hydra.run.dir=.", "--cfg", "job"])
    check_overrides("config", ["backbone=custom", "+backbone.growth_rate=8", "loss.class_weight=auto", "-m"])


def test_every_unknown_key_is_listed_once():
    with pytest.raises(ConfigError) as info:
        check_overrides("infer", ["outptu=a", "outptu=b", "+bogus.x=1", "~overlay"])
    message = str(info.value)
    assert message.count("unknown key 'outptu'") == 1 and "unknown key 'bogus'" in message
    assert "'overlay'" not in message.split("valid keys")[0]
