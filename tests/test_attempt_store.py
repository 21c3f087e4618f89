"""The ranks of one torchrun attempt agree on a part of the agent's store that no earlier attempt used, whatever
the earlier attempts left in it and whichever rank arrives first (threads on one in-memory store here; the slow
tests in test_torchrun_elastic.py run it under torchrun)."""
import datetime
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch.distributed as dist

from segdense.engine.attempt_store import LATEST, agree_on_attempt, attempt_store

TIMEOUT = datetime.timedelta(seconds=20)


def attempt(store, world_size, delays=None, timeout=TIMEOUT):
    """Every rank's token, rank r starting after ``delays[r]`` seconds."""
    delays = delays or [0.0] * world_size

    def rank(r):
        time.sleep(delays[r])
        return agree_on_attempt(store, r, world_size, timeout)

    with ThreadPoolExecutor(world_size) as pool:
        return list(pool.map(rank, range(world_size)))


def test_the_ranks_of_an_attempt_agree_and_each_attempt_gets_a_new_token():
    store = dist.HashStore()
    first = attempt(store, 3)
    assert len(set(first)) == 1
    # The other ranks arrive first now and find the first attempt's token, finished and ready: not theirs.
    second = attempt(store, 3, delays=[0.3, 0.0, 0.0])
    assert len(set(second)) == 1 and second[0] != first[0]
    third = attempt(store, 3, delays=[0.0, 0.2, 0.3])
    assert len(set(third)) == 1 and third[0] not in (first[0], second[0])


def test_a_rank_that_announced_itself_to_a_dead_attempt_moves_to_the_next():
    """Rank 0 of an attempt published its token and was killed before rank 1 announced itself: the token is never
    marked ready. Rank 1 of the next attempt, first to arrive, announces itself to it and must still end up in
    the token of the new rank 0."""
    store = dist.HashStore()
    store.set(LATEST, "dead0attempt")
    tokens = attempt(store, 2, delays=[0.3, 0.0])
    assert tokens[0] == tokens[1] != "dead0attempt"
    assert store.check(["segdense/attempt/dead0attempt/seen/1"])  # it did announce itself there first


def test_stores_of_two_attempts_are_apart_and_the_same_for_every_rank():
    store = dist.HashStore()
    seen = {}

    def rank(r, attempt_number):
        part = attempt_store(store, r, 2, TIMEOUT)
        if r == 0:
            part.set("address", f"attempt {attempt_number}")
        seen[(attempt_number, r)] = part.get("address").decode()

    for number in (1, 2):
        threads = [threading.Thread(target=rank, args=(r, number)) for r in (1, 0)]
        [t.start() for t in threads]
        [t.join(timeout=30) for t in threads]
    # Rank 1 of attempt 2 reads the address of attempt 2's rank 0, never the one attempt 1 left behind.
    assert seen == {(1, 0): "attempt 1", (1, 1): "attempt 1", (2, 0): "attempt 2", (2, 1): "attempt 2"}


def test_a_rank_whose_rank_0_never_comes_times_out_with_a_message():
    store = dist.HashStore()
    attempt(store, 2)  # an earlier attempt, finished: its token is ready
    with pytest.raises(TimeoutError, match="rank 1: the rank 0 of this attempt did not arrive"):
        agree_on_attempt(store, 1, 2, datetime.timedelta(seconds=0.5))
