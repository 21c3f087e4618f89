"""Every process of a multi-process run starts from the same checkpoint, or all stop with one clear error: each
finds last.pt itself, and a run directory that differs between machines would have them train different steps."""
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from segdense.engine.distributed import check_same_start
from segdense.errors import CheckpointError

LAST = "/runs/a/checkpoints/last.pt"


def _worker(rank, rendezvous, out):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        check_same_start(10, LAST)  # the same on both: nothing to say
        try:
            check_same_start(*[(10, LAST), (0, None)][rank])  # rank 1 sees no checkpoint
        except CheckpointError as e:
            Path(out, f"rank{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_processes_that_would_start_from_different_checkpoints_all_stop_with_one_message(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert messages[0] == messages[1]
    assert f"rank 0: iteration 10 ({LAST}); rank 1: iteration 0 (no checkpoint)" in messages[0]
    assert "hydra.run.dir" in messages[0]

