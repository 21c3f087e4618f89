"""The tools' error boundary: a user's mistake is one line and exit status 2; a bug of segdense keeps its traceback."""
import subprocess
import sys

import pytest

from segdense.config.cli import run_tool
from segdense.errors import CheckpointError, ConfigError, MissingFileError, UserError

from test_eval_bad_input import fails_with
from train_utils import TINY, compose_config


@pytest.mark.parametrize("bug", [ValueError("internal shape mismatch"), TypeError("bad call"), KeyError("x")])
def test_an_internal_error_keeps_its_traceback(bug, capsys):
    def job(cfg):
        raise bug

    with pytest.raises(type(bug)):
        run_tool(job, compose_config(TINY))
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("mistake", [ConfigError("lr must be positive"), CheckpointError("x.pt could not be read"),
                                     MissingFileError("input=*.png: the pattern matches no files")])
def test_a_users_mistake_is_one_line(mistake, capsys):
    def job(cfg):
        raise mistake

    assert fails_with(job, compose_config(TINY), capsys) == f"error: {mistake}"
    assert isinstance(mistake, UserError)


def test_a_constructor_refusing_a_config_value_is_a_config_error_naming_the_block(tmp_path, capsys):
    from segdense.config.train_job import train

    cfg = compose_config([o for o in TINY if not o.startswith("head")] + ["head=deeplabv3", "head.channels=16",
                                                                          "head.atrous_rates=[0,2,3]"])
    err = fails_with(lambda c: train(c, run_dir=tmp_path), cfg, capsys)
    assert err == "error: backbone/head: atrous_rates must be positive ints, got [0, 2, 3]"


def test_a_required_key_left_unset_is_one_line(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from segdense.config.eval_job import evaluate_job
    from train_utils import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"output_dir={tmp_path}"])
    err = fails_with(evaluate_job, cfg, capsys)
    assert err == "error: checkpoint must be set: pass checkpoint=..."


EXIT_PROBE = """
import atexit, gc, logging, sys
from segdense.config.cli import exit_without_final_collection

atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs after the freeze
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
exit_without_final_collection()
cycle = {"log": open(sys.argv[2], "w")}
cycle["self"] = cycle
cycle["log"].write("written before exit")
cycle["log"].close()
logging.getLogger("probe").info("logged before exit")
print("frozen before exit:", gc.get_freeze_count() > 0, flush=True)
"""


def test_the_tools_exit_skips_the_final_collection_and_loses_nothing(tmp_path):
    # eval and infer freeze every object at exit (their processes end 0.65 s sooner); logging's own atexit flush
    # still runs, and files are closed by the job itself.
    log, out = tmp_path / "tool.log", tmp_path / "out.txt"
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(log), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["frozen before exit: False", "frozen at exit: True"]
    assert "logged before exit" in log.read_text() and out.read_text() == "written before exit"
