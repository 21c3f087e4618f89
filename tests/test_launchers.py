"""How processes find each other: torchrun's variables, SLURM's (``srun`` without torchrun), or none."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segdense.engine.launchers import Launch, detect_launch, expand_hostlist
from segdense.errors import ConfigError
from segdense.runtime import load_checkpoint

from train_utils import TINY, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("hostlist, hosts", [
    ("node07", ["node07"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[08-11]", ["node08", "node09", "node10", "node11"]),
    ("gpu-a[1,3-4],gpu-b7", ["gpu-a1", "gpu-a3", "gpu-a4", "gpu-b7"]),
    ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("a1,b[2],c.example.org", ["a1", "b2", "c.example.org"]),
])
def test_slurm_host_lists_expand_like_scontrol_show_hostnames(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist, problem", [
    ("node[01-03", "malformed"), ("node]1", "malformed"), ("a,,b", "malformed"), ("", "malformed"),
    ("node[3-1]", "'3-1' is not a number or an increasing range"), ("node[a-b]", "'a-b' is not a number"),
])
def test_a_malformed_host_list_is_named_in_the_error(hostlist, problem):
    with pytest.raises(ConfigError, match=problem) as error:
        expand_hostlist(hostlist)
    assert repr(hostlist) in str(error.value) and "expected" in str(error.value)


SLURM_4 = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "98761234",
           "SLURM_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize("env, launch", [
    ({}, Launch("single process")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}, Launch("slurm")),  # srun -n1: as today
    (SLURM_4, Launch("slurm", 2, 0, 4, "gpu07", 16234)),
    ({**SLURM_4, "SLURM_NODELIST": "x", "SLURM_JOB_NODELIST": "y"}, Launch("slurm", 2, 0, 4, "x", 16234)),
    ({**SLURM_4, "SLURM_NODELIST": None, "SLURM_JOB_NODELIST": "y[3-4]"}, Launch("slurm", 2, 0, 4, "y3", 16234)),
    ({**SLURM_4, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "23456"}, Launch("slurm", 2, 0, 4, "10.0.0.5", 23456)),
    ({**SLURM_4, "SLURM_JOB_ID": None}, Launch("slurm", 2, 0, 4, "gpu07", 29500)),
    ({**SLURM_4, "WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}, Launch("torchrun", 5, 1, 8)),  # srun torchrun
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, Launch("torchrun")),
], ids=["none", "srun-one-task", "srun", "nodelist-first", "job-nodelist", "master-set", "no-job-id",
        "torchrun-wins", "torchrun-one"])
def test_the_launcher_is_read_from_the_environment(env, launch):
    assert detect_launch({k: v for k, v in env.items() if v is not None}) == launch


@pytest.mark.parametrize("env, problem", [
    ({**SLURM_4, "SLURM_NTASKS": "four"}, "SLURM_NTASKS must be a whole number, got 'four'"),
    ({**SLURM_4, "SLURM_NODELIST": "gpu[07-"}, "SLURM_NODELIST: host list 'gpu[07-' is malformed"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "set neither SLURM_NODELIST nor SLURM_JOB_NODELIST"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
])
def test_bad_launcher_variables_are_named(env, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")):
        detect_launch(env)


# Runs tools/train.py; the task with SLURM_PROCID=1 sends itself SIGUSR1 during training step 3.
SIGNAL_ONE_RANK = """
import os, runpy, signal, sys
from segdense.engine.trainer import Trainer
real_step = Trainer._step
def step(self, loader):
    if os.environ["SLURM_PROCID"] == "1" and self.iteration == 2:
        os.kill(os.getpid(), signal.SIGUSR1)
    return real_step(self, loader)
Trainer._step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start_slurm_tasks(tmp_path, script, *overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(SLURM_NTASKS="2", SLURM_NODELIST="127.0.0.[1-2]", SLURM_JOB_ID="4242", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, str(script), str(ROOT / "tools" / "train.py"), *TINY, *overrides]
    return [subprocess.Popen(cmd, env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]


def test_two_slurm_tasks_train_as_one_job_and_stop_together_when_one_is_signalled(tmp_path):
    (tmp_path / "signal_one_rank.py").write_text(SIGNAL_ONE_RANK)
    tasks = start_slurm_tasks(tmp_path, tmp_path / "signal_one_rank.py")
    outputs = [task.communicate(timeout=240)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [138, 138], outputs[0][-3000:] + outputs[1][-3000:]
    runs = [p.parent.parent for p in tmp_path.glob("outputs/*/*/checkpoints/last.pt")]
    assert len(runs) == 1  # one job, one run directory: rank 0's
    log = (runs[0] / "train.log").read_text()
    assert "launcher: slurm, 2 process(es), rendezvous at 127.0.0.1:" in log and "2 process(es) = 8" in log
    # rank 1 alone was signalled, during step 3: both stopped after it, rank 0 said so and saved there
    assert f"SIGUSR1: stopped after iteration 3, state saved to {runs[0]}/checkpoints/last.pt" in outputs[0]
    assert "stopped after iteration" not in outputs[1]
    assert load_checkpoint(runs[0] / "checkpoints/last.pt")["iteration"] == 3
