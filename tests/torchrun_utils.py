"""Watching and signalling torchrun's workers from outside (Linux /proc): for the slow torchrun tests and
torchrun_restart_demo.py."""
import os
import signal
import subprocess
import time
from pathlib import Path


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to ``proc``'s process group (started with ``start_new_session=True``: its workers too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: /proc/<pid>/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def worker_environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (empty once it is gone)."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(entry.decode(errors="replace").partition("=")[::2] for entry in entries if b"=" in entry)


def worker_of_rank(agent: int, rank: int, variable: str = "RANK") -> int | None:
    """The worker of torchrun ``agent`` whose ``variable`` (RANK, GROUP_RANK) is ``rank``."""
    for child in children(agent):
        if worker_environ(child).get(variable) == str(rank):
            return child
    return None


def sigterm_pending(pid: int) -> bool:
    """Whether a SIGTERM waits for ``pid`` (Linux: ShdPnd and SigPnd in /proc/<pid>/status)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return False
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending >> (signal.SIGTERM - 1) & 1)


def kill_node_2_while_node_1_is_busy(agents: list[subprocess.Popen], timeout: float) -> list[int]:
    """SIGKILL to node 2's worker while node 1's is stopped (SIGSTOP), as in a long step: node 1's agent, which
    sees its worker alive and node 2 waiting in the next rendezvous round, restarts it as a membership change
    (SIGTERM) without counting a restart. The worker continues (SIGCONT) once that SIGTERM waits for it, or
    after ``timeout`` seconds. One worker per node. Returns the agents' pids, node 1's first."""
    nodes = {rank: (agent.pid, worker) for agent in agents for rank in (0, 1)
             if (worker := worker_of_rank(agent.pid, rank, "GROUP_RANK")) is not None}
    assert sorted(nodes) == [0, 1], f"not one worker per node: {nodes}"
    busy, victim = nodes[0][1], nodes[1][1]
    os.kill(busy, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while not sigterm_pending(busy):
            assert time.monotonic() < deadline, "node 1's agent did not stop its worker"
            time.sleep(0.05)
    finally:
        os.kill(busy, signal.SIGCONT)
    return [nodes[0][0], nodes[1][0]]
