"""torchrun end to end, several processes on CPU (gloo): two c10d "nodes" on loopback; a worker killed with SIGKILL
under --max-restarts that resumes from last.pt, on one machine and on node 2 of two. Slow (about a minute each on
2 idle cores, several under load): marked ``slow``, left out of ``python -m pytest -q``; run them with
``python -m pytest -q -m slow -n 0``."""
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from torchrun_utils import children, kill_group, kill_node_2_while_node_1_is_busy, worker_environ, worker_of_rank
from train_utils import TINY, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "tools" / "train.py")
# The workers import this checkout's segdense, also where the installed one is another checkout's.
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
RUN_TIMEOUT = 420  # seconds per torchrun; a run takes well under a minute on 2 idle cores


def overrides(run_dir, *extra):
    return [*TINY, "deterministic=true", f"hydra.run.dir={run_dir}", *extra]


def start(cmd, log: Path, cwd) -> subprocess.Popen:
    """``cmd`` in a session of its own (its workers too), stdout and stderr into ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=cwd, start_new_session=True)


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = RUN_TIMEOUT,
             watch=lambda: None) -> list[int]:
    """The exit codes of ``procs``, calling ``watch()`` every 50 ms until they end; every process group still
    running after ``timeout`` seconds is killed and the test fails with the ends of the logs."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                pytest.fail(f"torchrun still running after {timeout} s:\n" + tails(logs))
            watch()
            time.sleep(0.05)
        return [p.returncode for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)


def tails(logs, chars=3000):
    return "\n".join(f"--- {log}\n{log.read_text()[-chars:]}" for log in logs if log.exists())


def run(cmd, log: Path, cwd) -> None:
    """``cmd`` to its end, bounded; it must exit 0."""
    proc = start(cmd, log, cwd)
    (rc,) = wait_all([proc], [log])
    assert rc == 0, tails([log])


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        assert_same_tensors(a["state"][index], b["state"][index])


def test_two_c10d_nodes_on_loopback_train_as_one_job_like_a_standalone_run(tmp_path):
    """Two torchrun agents, one process each, meet through a c10d rendezvous on 127.0.0.1 (node ranks assigned
    by the rendezvous) and train one 2-process job; the weights equal those of ``--standalone
    --nproc-per-node=2``: the same ranks read the same batch slots, and the mean of two gradients does not
    depend on the order of the summands."""
    run_dir = tmp_path / "c10d"
    rdzv = [f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id=segdense-test-{uuid.uuid4().hex[:12]}"]
    cmd = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", *rdzv,
           TRAIN, *overrides(run_dir)]
    logs = [tmp_path / "node_a.log", tmp_path / "node_b.log"]
    agents = [start(cmd, log, tmp_path) for log in logs]
    assert wait_all(agents, logs) == [0, 0], tails(logs)

    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["c10d"]  # one run directory
    log = (run_dir / "train.log").read_text()
    assert "launcher: torchrun, 2 process(es)" in log and "batch 4 x 2 process(es) = 8" in log
    c10d = load(run_dir / "checkpoints" / "last.pt")
    assert c10d["iteration"] == 4

    standalone_dir = tmp_path / "standalone"
    run([*TORCHRUN, "--standalone", "--nproc-per-node=2", TRAIN, *overrides(standalone_dir)],
        tmp_path / "standalone.log", tmp_path)
    standalone = load(standalone_dir / "checkpoints" / "last.pt")
    assert_same_tensors(c10d["model"], standalone["model"])
    assert_same_optimizer(c10d["optimizer"], standalone["optimizer"])


def logged_iteration(log: Path, total: int) -> int:
    """The last ``it N/total`` progress line in ``log`` (0 before the first)."""
    found = re.findall(rf"\bit (\d+)/{total}\b", log.read_text()) if log.exists() else []
    return int(found[-1]) if found else 0


def test_a_worker_killed_with_sigkill_restarts_resumes_and_ends_bit_identical(tmp_path):
    """``--max-restarts=2``: rank 1 gets SIGKILL after last.pt exists and training went on past it; torchrun
    restarts both workers, which resume from last.pt (``resume=auto``) and end with the weights and optimizer
    state of an uninterrupted run of the same command."""
    iterations, interval, kill_after = 80, 10, 13
    extra = [f"iterations={iterations}", f"checkpoint_interval={interval}", "val_interval=0", "resume=auto"]

    def command(run_dir):
        return [*TORCHRUN, "--standalone", "--nproc-per-node=2", "--max-restarts=2", TRAIN,
                *overrides(run_dir, *extra)]

    run_dir, out = tmp_path / "killed", tmp_path / "killed.log"
    train_log, last = run_dir / "train.log", run_dir / "checkpoints" / "last.pt"
    agent = start(command(run_dir), out, tmp_path)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (last.exists() and logged_iteration(train_log, iterations) >= kill_after):
            assert agent.poll() is None, "torchrun ended before the kill:\n" + tails([out, train_log])
            assert time.monotonic() < deadline, "no checkpoint and progress past it in time:\n" + tails([out])
            time.sleep(0.05)
        victim = worker_of_rank(agent.pid, 1)
        assert victim is not None, f"no rank-1 worker among {children(agent.pid)}"
        os.kill(victim, signal.SIGKILL)
        killed_at = logged_iteration(train_log, iterations)
        assert killed_at < iterations, "the run was over before the kill"
    except BaseException:
        kill_group(agent)
        raise
    (rc,) = wait_all([agent], [out, train_log])
    assert rc == 0, tails([out, train_log])

    log = train_log.read_text()
    resumed = [int(i) for i in re.findall(r"resumed from \S+last\.pt at iteration (\d+)", log)]
    assert len(resumed) == 1 and interval <= resumed[0] <= killed_at, (resumed, killed_at)
    assert log.count("launcher: torchrun, 2 process(es)") == 2  # the first attempt and the restart
    killed = load(last)
    assert killed["iteration"] == iterations

    clean_dir = tmp_path / "uninterrupted"
    run(command(clean_dir), tmp_path / "uninterrupted.log", tmp_path)
    assert "resumed from" not in (clean_dir / "train.log").read_text()
    clean = load(clean_dir / "checkpoints" / "last.pt")
    assert_same_tensors(killed["model"], clean["model"])
    assert_same_optimizer(killed["optimizer"], clean["optimizer"])
    assert killed["scheduler"] == clean["scheduler"]


def c10d_command(run_dir, *extra) -> list[str]:
    """One torchrun agent of a two-node c10d job on loopback (start it twice), with a rendezvous of its own."""
    rdzv = [f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id=segdense-test-{uuid.uuid4().hex[:12]}"]
    return [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", *rdzv, "--max-restarts=2",
            TRAIN, *overrides(run_dir, *extra)]


def test_two_c10d_nodes_both_restart_after_a_worker_of_node_2_is_killed_and_end_bit_identical(tmp_path):
    """Two torchrun agents on loopback (c10d rendezvous, ``--max-restarts=2``); node 2's worker gets SIGKILL after
    last.pt exists and training went on past it. Both nodes start new workers, which meet again, resume from
    last.pt and end with the weights and optimizer state of the same job run uninterrupted.

    Each agent counts restarts for itself: node 2's counts its worker's failure, node 1's restarts its worker for
    node 2 rejoining and counts nothing. The new workers see ``TORCHELASTIC_RESTART_COUNT`` 0 and 1 and must meet
    all the same, not in store parts named after it (where they waited for each other until the timeout), and
    not at the addresses the first attempt left in torchrun's store."""
    iterations, interval, kill_after = 80, 10, 13
    extra = [f"iterations={iterations}", f"checkpoint_interval={interval}", "val_interval=0", "resume=auto"]
    run_dir = tmp_path / "killed"
    train_log, last = run_dir / "train.log", run_dir / "checkpoints" / "last.pt"
    logs = [tmp_path / "node_1.log", tmp_path / "node_2.log"]
    agents = [start(cmd, log, tmp_path) for cmd in [c10d_command(run_dir, *extra)] for log in logs]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (last.exists() and logged_iteration(train_log, iterations) >= kill_after):
            assert all(a.poll() is None for a in agents), "torchrun ended before the kill:\n" + tails(logs)
            assert time.monotonic() < deadline, "no checkpoint and progress past it in time:\n" + tails(logs)
            time.sleep(0.05)
        first = {a.pid: set(children(a.pid)) for a in agents}
        node_1, node_2 = kill_node_2_while_node_1_is_busy(agents, RUN_TIMEOUT)
        killed_at = logged_iteration(train_log, iterations)
        assert killed_at < iterations, "the run was over before the kill"
    except BaseException:
        for agent in agents:
            kill_group(agent)
        raise

    counts: dict[int, dict[int, str]] = {a.pid: {} for a in agents}  # agent: {its new worker: restart count}

    def watch():
        for agent in agents:
            for child in set(children(agent.pid)) - first[agent.pid]:
                count = worker_environ(child).get("TORCHELASTIC_RESTART_COUNT")  # None until it runs python
                if count is not None:
                    counts[agent.pid].setdefault(child, count)

    assert wait_all(agents, logs + [train_log], watch=watch) == [0, 0], tails(logs + [train_log])
    # One new worker on each node; their agents counted that restart differently.
    assert [list(counts[node].values()) for node in (node_1, node_2)] == [["0"], ["1"]], counts

    log = train_log.read_text()
    resumed = [int(i) for i in re.findall(r"resumed from \S+last\.pt at iteration (\d+)", log)]
    assert len(resumed) == 1 and interval <= resumed[0] <= killed_at, (resumed, killed_at)
    assert log.count("launcher: torchrun, 2 process(es)") == 2  # the first attempt and the restart
    killed = load(last)
    assert killed["iteration"] == iterations

    clean_dir, clean_logs = tmp_path / "uninterrupted", [tmp_path / "clean_node_1.log", tmp_path / "clean_node_2.log"]
    clean_agents = [start(cmd, log, tmp_path) for cmd in [c10d_command(clean_dir, *extra)] for log in clean_logs]
    assert wait_all(clean_agents, clean_logs) == [0, 0], tails(clean_logs)
    assert "resumed from" not in (clean_dir / "train.log").read_text()
    clean = load(clean_dir / "checkpoints" / "last.pt")
    assert_same_tensors(killed["model"], clean["model"])
    assert_same_optimizer(killed["optimizer"], clean["optimizer"])
    assert killed["scheduler"] == clean["scheduler"]
