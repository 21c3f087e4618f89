"""tools/eval.py and tools/infer.py split across processes (gloo on 127.0.0.1, started as torchrun starts them):
each image handled once, metrics and files equal to one process's, uneven and empty shards; one list of inputs
(rank 0's, without the output folder's files); one dataset length; a process that ends early stops the others
within ``process_timeout``. Run as a script, this file is the worker of the torchrun test below."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segdense.config.eval_job import evaluate_job
from segdense.config.infer_job import infer_job
from segdense.data.loader import ShardSampler
from segdense.errors import ConfigError, MissingFileError
from segdense.inference.files import list_inputs

from infer_fixtures import tiny_checkpoint, write_image  # noqa: F401 (a fixture)
from test_eval import compose_eval
from test_infer import compose_infer
from torchrun_utils import kill_group
from train_utils import free_port, spawn_within

ROOT = Path(__file__).resolve().parents[1]

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
    spawn_within(worker, (free_port(), str(checkpoint), str(root)), WORLD, TIMEOUT_S)
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


# One list of inputs, one dataset length, a bounded wait: single process, torchrun, and processes started alone.

def write_images(folder: Path, names) -> list[str]:
    rng = np.random.default_rng(1)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(folder / name, rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))
    return sorted(Path(name).name for name in names)


def outputs_of(names) -> list[str]:
    return sorted(name.replace(".png", suffix) for name in names for suffix in (".png", "_overlay.png"))


def test_a_rerun_into_output_inside_input_takes_no_output_for_an_input(tiny_checkpoint, tmp_path, caplog):  # noqa: F811
    names = write_images(tmp_path / "images", [f"a{i}.png" for i in range(3)])

    def run(spec):
        return infer_job(compose_infer([f"checkpoint={tiny_checkpoint}", f"input={tmp_path / spec}",
                                        f"output={tmp_path / 'images/pred'}"]))

    assert [p.name for p in run("images").written] == names
    for spec in ("images", "images/**/*.png"):  # a folder (searched recursively) and a recursive glob
        with caplog.at_level(logging.INFO, logger="segdense.infer"):
            rerun = run(spec)
        assert [p.name for p in rerun.skipped] == names and not rerun.written and rerun.ok
        assert "6 image(s) inside output" in caplog.text  # 3 labels + 3 overlays, left out and said so
        caplog.clear()
    assert sorted(files_under(tmp_path / "images/pred")) == outputs_of(names)


def test_the_listing_leaves_out_only_files_inside_output(tmp_path):
    write_images(tmp_path / "in", ["a.png", "sub/b.png"])
    write_images(tmp_path / "in/pred", ["a.png", "a_overlay.png"])
    assert [p.name for p in list_inputs(tmp_path / "in", tmp_path / "in/pred")] == ["a.png", "b.png"]
    assert len(list_inputs(tmp_path / "in", tmp_path / "elsewhere")) == 4  # not inside: nothing left out
    assert len(list_inputs(tmp_path / "in/sub", tmp_path / "in")) == 1  # output holds the input: it is the input
    assert len(list_inputs(tmp_path / "in/pred/a.png", tmp_path / "in/pred")) == 1  # a file named: it is the input
    with pytest.raises(MissingFileError, match=r"every image it holds \(2\) lies inside output"):
        list_inputs(tmp_path / "in/**/pred/*.png", tmp_path / "in/pred/")


def test_an_output_that_would_replace_its_input_is_refused(tiny_checkpoint, tmp_path):  # noqa: F811
    write_images(tmp_path / "images", ["a.png", "b.png"])
    before = files_under(tmp_path / "images")
    overrides = [f"checkpoint={tiny_checkpoint}", f"input={tmp_path / 'images'}", f"output={tmp_path / 'images'}",
                 "overwrite=true", "overlay=false"]
    with pytest.raises(ConfigError, match=r"would replace the input .*a\.png"):
        infer_job(compose_infer(overrides))
    assert files_under(tmp_path / "images") == before


def hide_from_this_process(name: str):
    """This process's folder listings (``Path.rglob``) no longer show files called ``name``, as on a machine whose
    view of a network filesystem lags; returns what undoes it."""
    real = Path.rglob

    def rglob(self, pattern, *args, **kwargs):
        return (path for path in real(self, pattern, *args, **kwargs) if path.name != name)

    Path.rglob = rglob
    return lambda: setattr(Path, "rglob", real)


def torchrun_cases(root: Path, checkpoint: str) -> None:
    """What each torchrun worker of the test below runs (``python tests/test_sharded_tools.py ROOT CHECKPOINT``):
    a run and a rerun into ``output`` inside ``input``; a run in which rank 1's listing lacks ``a4.png``; an
    evaluation in which rank 1's dataset has one image less. Writes what each gave (or raised) to
    ``result_<rank>.json``."""
    rank, found = int(os.environ["RANK"]), {}

    def attempt(name, job, describe=report_data):
        try:
            found[name] = describe(job())
        except Exception as e:  # noqa: BLE001 (recorded for the test to check)
            found[name] = f"{type(e).__name__}: {e}"

    infer = [f"checkpoint={checkpoint}", "batch_size=2", "progress=false", "process_timeout=60"]
    for run in ("first", "rerun"):
        attempt(run, lambda: infer_job(compose_infer(infer + [f"input={root / 'rerun'}",
                                                              f"output={root / 'rerun/pred'}"])))
    undo = hide_from_this_process("a4.png") if rank == 1 else (lambda: None)
    attempt("views", lambda: infer_job(compose_infer(infer + [f"input={root / 'views'}", f"output={root / 'out'}"])))
    undo()
    evaluation = [f"checkpoint={checkpoint}", "dataset=synthetic", f"dataset.num_samples={7 - rank}",
                  "dataset.image_size=48", "batch_size=2", "num_workers=0", "progress=false",
                  f"output_dir={root / 'eval'}", "process_timeout=60"]
    attempt("eval", lambda: evaluate_job(compose_eval(evaluation)), lambda metrics: f"mIoU {metrics['mIoU']}")
    (root / f"result_{rank}.json").write_text(json.dumps(found))


def run_torchrun(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node=2`` on this machine (gloo), its process group killed after ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"torchrun still running after {timeout} s (processes waiting for each other?)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def reported(found: dict, case: str) -> dict:
    assert isinstance(found[case], dict), f"{case}: {found[case]}"
    return found[case]


@pytest.mark.slow
def test_under_torchrun_every_process_uses_rank_0s_inputs_and_dataset_length(tiny_checkpoint, tmp_path):  # noqa: F811
    names = write_images(tmp_path / "rerun", [f"a{i}.png" for i in range(6)])
    views = write_images(tmp_path / "views", [f"a{i}.png" for i in range(7)])
    (tmp_path / "views/a2z.png").write_bytes(b"not a png")  # position 3: rank 1's batch (a2, a2z)
    done = run_torchrun([__file__, str(tmp_path), str(tiny_checkpoint)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    main, other = (json.loads((tmp_path / f"result_{rank}.json").read_text()) for rank in (0, 1))
    # output inside input: the first run writes each image once, the rerun skips each (no output taken as input)
    first, rerun = reported(main, "first"), reported(main, "rerun")
    assert first["written"] == names and first["ok"] and rerun["skipped"] == names and not rerun["written"], main
    assert rerun["ok"] and sorted(files_under(tmp_path / "rerun/pred")) == outputs_of(names)
    # rank 1 could not see a4.png: rank 0's list is every process's, so each image is written once, a4 too
    assert reported(main, "views")["written"] == views and main["views"]["failed"] == ["a2z.png"], main["views"]
    assert reported(other, "views")["written"] == ["a2.png", "a5.png", "a6.png"]  # rank 1's share of rank 0's list
    assert other["views"]["failed"] == ["a2z.png"] and sorted(files_under(tmp_path / "out")) == outputs_of(views)
    # the evaluation: one error on every process, naming what each one saw
    for found in (main, other):
        assert found["eval"].startswith("ConfigError: the processes see different numbers of images"), found["eval"]
        assert "(rank 0: 7; rank 1: 6)" in found["eval"]
    assert not (tmp_path / "eval" / "metrics.json").exists()


def start_alone(rank: int, port: int, overrides: list[str], cwd: Path) -> subprocess.Popen:
    """tools/infer.py as process ``rank`` of 2 meeting at 127.0.0.1:``port`` through env://, with no torchrun agent
    to stop the others when one ends (as ``srun`` without ``--kill-on-bad-exit``)."""
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(ROOT / "tools/infer.py"), *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("death, expected", [
    ("nonexistent_key=1", r"did not all meet within 3 s \(.*1/2 clients joined"),  # ends before it joins
    ("checkpoint=missing.pt", r"lost the other processes in gather_object"),  # ends after it joined
], ids=["before-joining", "after-joining"])
@pytest.mark.slow
def test_a_process_that_ends_stops_the_other_within_the_bound(tiny_checkpoint, tmp_path, death, expected):  # noqa: F811
    write_images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    port = free_port()
    common = [f"checkpoint={tiny_checkpoint}", "input=images", "output=out", "batch_size=1", "process_timeout=3"]
    procs = [start_alone(0, port, common, tmp_path), start_alone(1, port, common + [death], tmp_path)]
    try:
        _, err_1 = procs[1].communicate(timeout=120)
        _, err_0 = procs[0].communicate(timeout=120)  # not the 30 minutes a collective waited without the bound
    except subprocess.TimeoutExpired:
        pytest.fail("rank 0 still waits for rank 1, which ended")
    finally:
        for proc in procs:
            kill_group(proc)
    assert procs[1].returncode == 2 and "error:" in err_1
    assert procs[0].returncode == 2, err_0[-3000:]
    error = [line for line in err_0.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: rank 0 of 2: "), err_0[-3000:]
    assert re.search(expected, error[0]) and "--kill-on-bad-exit=1" in error[0], error[0]


if __name__ == "__main__":  # a worker of test_under_torchrun_every_process_uses_rank_0s_inputs_and_dataset_length
    from segdense.engine.distributed import cleanup_distributed

    torch.set_num_threads(1)
    try:
        torchrun_cases(Path(sys.argv[1]), sys.argv[2])
    finally:
        cleanup_distributed()
