"""The part of torchrun's store that belongs to one attempt (one start of the workers), agreed on by all of them.

Under torchrun (c10d or static rendezvous) every worker connects to a TCPStore that the agent of the first node
(rendezvous rank 0) hosts for the whole job. It outlives ``--max-restarts`` restarts, and the keys an earlier
attempt wrote there (each rank's gloo or NCCL address) are still in it when the workers start again: meeting in
that store as it is, a restarted worker can read an earlier attempt's addresses and fail to connect. Nothing
torchrun gives a worker names the attempt consistently: ``TORCHELASTIC_RESTART_COUNT`` is counted by each agent
for itself, and an agent that restarts its workers because another node rejoins (a membership change, not a
failure) does not count it, so the workers of one attempt on two nodes can see different counts.

So the workers agree on the attempt themselves: rank 0 publishes a fresh random token, every other rank
announces that it has seen it, and rank 0 then marks it ready. A token that is ready before a rank announced
itself is an earlier attempt's, and that rank waits for the next one. torchrun stops every worker of an attempt
before it starts the next, so no worker of an earlier attempt writes while this happens.
"""
from __future__ import annotations

import datetime
import time
import uuid

import torch.distributed as dist

PREFIX = "segdense/attempt"
LATEST = f"{PREFIX}/latest"
POLL_SECONDS = 0.1


def attempt_store(store: dist.Store, rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """``store`` seen through the prefix of this attempt: every rank of it gets the same, no earlier attempt had
    it."""
    return dist.PrefixStore(f"{PREFIX}/{agree_on_attempt(store, rank, world_size, timeout)}", store)


def agree_on_attempt(store: dist.Store, rank: int, world_size: int, timeout: datetime.timedelta) -> str:
    """The token of this attempt, the same on every rank (see the module's docstring). Collective: every rank
    calls it once. After ``timeout``, a rank that rank 0 did not reach raises :class:`TimeoutError`, and rank 0,
    when the others did not announce themselves, the store's own timeout error."""
    if rank == 0:
        token = uuid.uuid4().hex
        store.set(LATEST, token)
        store.wait([_seen(token, r) for r in range(1, world_size)], timeout)
        store.set(_ready(token), "1")
        return token
    deadline = time.monotonic() + timeout.total_seconds()
    announced = None
    while time.monotonic() < deadline:
        token = store.get(LATEST).decode()  # waits for a rank 0 to have published one
        if token != announced and not store.check([_ready(token)]):  # ready before we announced: an old one
            store.set(_seen(token, rank), "1")
            announced = token
        elif token == announced and store.check([_ready(token)]):
            return token
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"rank {rank}: the rank 0 of this attempt did not arrive in torchrun's store within "
                       f"{timeout}; was every node's torchrun started?")


def _seen(token: str, rank: int) -> str:
    return f"{PREFIX}/{token}/seen/{rank}"


def _ready(token: str) -> str:
    return f"{PREFIX}/{token}/ready"
