"""tools/eval.py and tools/infer.py split across processes (gloo on 127.0.0.1, started as torchrun starts them):
each image handled once, metrics and files equal to one process's, uneven and empty shards."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from segdense.config.eval_job import evaluate_job
from segdense.config.infer_job import infer_job
from segdense.data.loader import ShardSampler

from infer_fixtures import tiny_checkpoint, write_image  # noqa: F401 (a fixture)
from test_eval import compose_eval
from test_infer import compose_infer
from train_utils import free_port

WORLD = 2
TIMEOUT_S = 120  # a collective that deadlocks fails the test instead of hanging it
# 7 images in batches of 2: rank 0 gets batches 0 and 2 (4 images), rank 1 batches 1 and 3 (3 images).
EVAL_MODES = {"whole": [], "slide": ["mode=slide", "crop_size=[32,32]", "stride=[20,20]"],
              "msflip": ["scales=[0.75,1.0]", "flip=true"]}
SIZES = [(40, 56), (33, 33), (48, 40), (64, 37), (35, 50), (41, 41), (56, 33)]


def eval_overrides(checkpoint, images, out: Path, mode: str) -> list[str]:
    """The evaluation of ``mode``; in whole mode with the report and the predictions too."""
    files = ["report=true", "report_images=3", f"save_predictions={out / 'predictions'}"] if mode == "whole" else []
    return [f"checkpoint={checkpoint}", "dataset=synthetic", f"dataset.num_samples={images}", "dataset.image_size=48",
            "batch_size=2", "num_workers=0", "progress=false", f"output_dir={out}", *files, *EVAL_MODES[mode]]


def infer_overrides(checkpoint, folder: Path, out: Path) -> list[str]:
    return [f"checkpoint={checkpoint}", f"input={folder}", f"output={out}", "batch_size=2", "progress=false",
            "save_proba=true"]


def run_all(checkpoint, root: Path, tag: str) -> None:
    """Every case of this file, written under ``root/tag``; the infer reports as ``report_*.json`` (rank 0's) and
    ``own_report_*.json`` (rank 1's)."""
    for images in (7, 1):
        for mode in EVAL_MODES if images == 7 else ["whole"]:
            evaluate_job(compose_eval(eval_overrides(checkpoint, images, root / tag / f"eval{images}_{mode}", mode)))
    for folder in ("seven", "one"):
        report = infer_job(compose_infer(infer_overrides(checkpoint, root / f"in_{folder}",
                                                         root / tag / f"infer_{folder}")))
        main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        name = f"report_{folder}.json" if main else f"own_report_{folder}.json"  # rank 0's holds every process's
        (root / tag / name).write_text(json.dumps(report_data(report)))


def report_data(report) -> dict:
    return {"written": [p.name for p in report.written], "skipped": [p.name for p in report.skipped],
            "failed": [p.name for p, _ in report.failed], "ok": report.ok, "summary": report.summary()}


def worker(rank: int, port: int, checkpoint: str, root: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from segdense.engine.distributed import cleanup_distributed

    try:
        run_all(checkpoint, Path(root), "two")
    finally:
        cleanup_distributed()


def spawn(fn, args) -> None:
    """``fn(rank, *args)`` in ``WORLD`` fresh processes; fails (and kills them) after ``TIMEOUT_S``."""
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} processes did not finish within {TIMEOUT_S} s (a collective waiting?)")


def make_folders(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "in_seven").mkdir()
    (root / "in_one").mkdir()
    for i, (h, w) in enumerate(SIZES):  # sizes differ: batches are padded, as one process pads them
        write_image(root / "in_seven" / f"a{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (root / "in_seven" / "a2z.png").write_bytes(b"not a png")  # position 3: rank 1's batch (a2, a2z)
    write_image(root / "in_one" / "only.png", rng.integers(0, 256, (44, 52, 3), dtype=np.uint8))


def varied_checkpoint(checkpoint: Path, path: Path) -> Path:
    """The tiny checkpoint with its weights perturbed (seeded): a model that predicts every class somewhere, so
    that equal confusion matrices mean something (two training steps predict one class everywhere)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(3)
    for name, value in state["model"].items():
        if value.is_floating_point() and not name.endswith(("running_mean", "running_var")):
            value += torch.randn(value.shape, generator=generator) * (value.std() if value.numel() > 1 else 0.1)
    torch.save(state, path)
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("sharded")
    make_folders(root)
    checkpoint = varied_checkpoint(tiny_checkpoint, root / "varied.pt")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: the same kernels, bit for bit
    try:
        run_all(checkpoint, root, "one")
    finally:
        torch.set_num_threads(threads)
    spawn(worker, (free_port(), str(checkpoint), str(root)))
    return root


def test_shards_cover_every_index_once_in_whole_batches():
    assert [list(ShardSampler(7, r, 2, block=2)) for r in range(2)] == [[0, 1, 4, 5], [2, 3, 6]]
    assert [list(ShardSampler(1, r, 2, block=2)) for r in range(2)] == [[0], []]
    assert [list(ShardSampler(7, r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    shards = [list(ShardSampler(10, r, 4, block=3)) for r in range(4)]
    assert sorted(i for s in shards for i in s) == list(range(10)) and shards[3] == [9]


@pytest.mark.parametrize("case", ["eval7_whole", "eval7_slide", "eval7_msflip", "eval1_whole"])
def test_two_processes_give_one_process_metrics_and_files(runs, case):
    one, two = runs / "one" / case, runs / "two" / case
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert metrics_two["confusion"] == metrics_one["confusion"]
    assert sum(1 for column in zip(*metrics_two["confusion"]) if sum(column)) >= 2  # not one class everywhere
    assert metrics_two == metrics_one  # mIoU, per class, the inference description: all equal
    files_one, files_two = files_under(one), files_under(two)
    assert files_two.keys() == files_one.keys()
    assert not [name for name in files_one if files_two[name] != files_one[name]]  # the report's pages too
    if case.endswith("whole"):
        assert metrics_one["infer"] == "whole"  # the strategy, not the wrapper that saves the predictions
        images = metrics_one["num_images"]
        assert len([n for n in files_two if n.startswith("predictions/labels/")]) == images
        rows = (two / "per_image.csv").read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == list(range(images))  # each image once, in order
        assert sum(int(row.split(",")[2]) for row in rows) == sum(map(sum, metrics_two["confusion"]))


def test_two_processes_write_every_output_once_byte_identical(runs):
    one, two = files_under(runs / "one" / "infer_seven"), files_under(runs / "two" / "infer_seven")
    assert sorted(two) == sorted(f"a{i}{suffix}" for i in range(7) for suffix in (".png", "_overlay.png", "_proba.npy"))
    assert two == one
    assert not [p for p in (runs / "two" / "infer_seven").iterdir() if p.name.startswith(".")]  # no temporary left
    single, one_image = files_under(runs / "one" / "infer_one"), files_under(runs / "two" / "infer_one")
    assert sorted(one_image) == ["only.png", "only_overlay.png", "only_proba.npy"] and one_image == single


def test_rank_0_reports_every_process_and_a_failure_on_another_rank(runs):
    merged = json.loads((runs / "two" / "report_seven.json").read_text())
    assert merged == json.loads((runs / "one" / "report_seven.json").read_text())
    assert merged["written"] == [f"a{i}.png" for i in range(7)] and merged["failed"] == ["a2z.png"]
    assert not merged["ok"] and merged["summary"].startswith("7 image(s) written, 0 skipped")
    own = json.loads((runs / "two" / "own_report_seven.json").read_text())
    assert own["written"] == ["a2.png", "a5.png", "a6.png"] and own["failed"] == ["a2z.png"]  # rank 1's share only
    empty = json.loads((runs / "two" / "own_report_one.json").read_text())
    assert empty["written"] == [] and empty["ok"]  # rank 1 had no image and waited for nothing
    assert json.loads((runs / "two" / "report_one.json").read_text())["written"] == ["only.png"]
