"""torchrun alone, no segdense training: two c10d nodes on loopback, one gloo worker each, ``--max-restarts=1``;
node 2's worker gets SIGKILL while node 1's is busy. How the restarted workers meet decides whether they do:

    python tests/torchrun_restart_demo.py --meet=count    # a store part per TORCHELASTIC_RESTART_COUNT
    python tests/torchrun_restart_demo.py --meet=plain    # env:// as it is
    python tests/torchrun_restart_demo.py --meet=agreed   # segdense.engine.attempt_store

Each run takes under a minute, or is killed after ``--timeout`` seconds; it prints, for every worker started,
its node, rank, ``TORCHELASTIC_RESTART_COUNT`` and ``MASTER_PORT``, and whether it met the other (the workers'
output is in the two node logs it names). Seen with torch 2.14.1: node 1's agent restarts its worker because node
2 rejoins (a membership change, which it does not count), node 2's because its worker failed (counted), so the
new workers see counts 0 and 1; all attempts get the same ``MASTER_PORT``, one store (node 1's agent's) that
still holds what the first attempt wrote. ``--meet=count``: the new workers wait in different parts of the
store, until ``--timeout`` or until node 1's fails on the first attempt's address (timing decides) and a third
attempt meets. ``--meet=plain``: rank 0 connects to the killed worker's address (``Connection refused``) and
fails; a third attempt meets. ``--meet=agreed``: they meet at once. With ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
in the environment, each attempt gets a new store on a new port, hosted by its rank-0 worker, and ``plain`` meets
at once too.
"""
import argparse
import datetime
import os
import subprocess
import sys
import socket
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS_AFTER_RESTART = 5


def worker(meet: str, marker: Path) -> None:
    import torch
    import torch.distributed as dist

    count, rank = os.environ["TORCHELASTIC_RESTART_COUNT"], int(os.environ["RANK"])
    restarted = marker.exists()  # the first attempt has met: this is a later one
    print(f"worker node={int(os.environ['GROUP_RANK']) + 1} rank={rank} TORCHELASTIC_RESTART_COUNT={count} "
          f"MASTER_PORT={os.environ['MASTER_PORT']} restarted={restarted}", flush=True)
    if restarted and rank == 1:
        time.sleep(5)  # a slower start (imports, data): rank 0 reads the store first
    timeout = datetime.timedelta(seconds=60)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    if meet == "count":
        store = dist.PrefixStore(f"attempt_{count}", store)
    elif meet == "agreed":
        sys.path.insert(0, str(ROOT))
        from segdense.engine.attempt_store import attempt_store
        store = attempt_store(store, rank, world, timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    print(f"worker rank={rank} met", flush=True)
    marker.touch()
    x = torch.ones(1)
    for _ in range(STEPS_AFTER_RESTART if restarted else 10**6):  # the first attempt runs until the kill
        dist.all_reduce(x)
        time.sleep(0.2)
    dist.destroy_process_group()


def drive(meet: str, timeout: float) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torchrun_utils import kill_group, kill_node_2_while_node_1_is_busy

    folder = Path(tempfile.mkdtemp(prefix="torchrun-restart-demo-"))
    marker = folder / "met_once"
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=demo-{port}",
           "--max-restarts=1", __file__, f"--meet={meet}", f"--marker={marker}"]
    logs = [folder / "node_1.log", folder / "node_2.log"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    agents = [subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True) for log in logs]
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # both have met and run a step or two
        kill_node_2_while_node_1_is_busy(agents, timeout)
        while any(a.poll() is None for a in agents) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        hung = [a.poll() is None for a in agents]
        for agent in agents:
            kill_group(agent)
    for node, (agent, log, was_hung) in enumerate(zip(agents, logs, hung), 1):
        lines = [line for line in log.read_text().splitlines() if line.startswith("worker ")]
        state = f"still running after {timeout:.0f} s, killed" if was_hung else f"exit status {agent.returncode}"
        starts, met = sum("restarted=" in line for line in lines), sum(line.endswith(" met") for line in lines)
        print(f"node {node} ({log}): {state}; {starts} worker(s) started, {met} met the other", *lines, sep="\n  ")
    return 0 if not any(hung) and all(a.returncode == 0 for a in agents) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meet", choices=("count", "plain", "agreed"), required=True)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before both nodes are killed")
    parser.add_argument("--marker", type=Path, help=argparse.SUPPRESS)  # set for the workers
    args = parser.parse_args()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        worker(args.meet, args.marker)
    else:
        sys.exit(drive(args.meet, args.timeout))
