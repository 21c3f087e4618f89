"""The training engine end to end on tiny models: artefacts, exact resume, best checkpoint, NaN, DDP."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segdense.config.train_job import train
from segdense.errors import ConfigError
from segdense.engine import checkpoint as ckpt
from segdense.runtime import load_checkpoint

from train_utils import TINY, compose_config, free_port, tiny_trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


class Crash(Exception):
    """Stands for the process dying at an arbitrary point."""


def capture(store):
    def hook(trainer, iteration):
        store["trainer"] = trainer

    return hook


def crash_at(n):
    def hook(trainer, iteration):
        if iteration == n:
            raise Crash(f"killed after iteration {n}")

    return hook


def test_short_run_lowers_loss_and_writes_every_artefact(tmp_path):
    seen = {}
    cfg = compose_config(TINY + ["iterations=12", "val_interval=6", "checkpoint_interval=6", "logger=[tensorboard]", "lr=0.05"])
    result = train(cfg, run_dir=tmp_path, hooks=[capture(seen)])
    losses = seen["trainer"].loss_history
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    confusion = torch.tensor(result["confusion"], dtype=torch.float64)  # rows: truth, columns: prediction
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag())
    assert [c["IoU"] for c in result["per_class"]] == pytest.approx(iou.tolist(), nan_ok=True)
    assert result["mIoU"] == pytest.approx(float(iou.nanmean()))
    assert result["aAcc"] == pytest.approx(float(confusion.diag().sum() / confusion.sum()))
    assert confusion.sum() > 0.9 * 8 * 64 * 64 and len(result["per_class"]) == 5  # the val split, ignore aside
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iteration"] == 12 and [h["iteration"] for h in metrics["history"]] == [6, 12]
    state = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert state["iteration"] == 12
    assert state["model_config"]["backbone"]["name"] == "densenet_custom"
    assert state["dataset"]["class_names"][1] == "circle"
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


@pytest.mark.parametrize("setting, expected", [("auto", None), ("false", False)])
def test_channels_last_setting_reaches_the_backbone_on_cpu(tmp_path, setting, expected):
    # auto leaves the CPU choice to the backbone (channels-last); false means NCHW everywhere.
    seen = {}
    train(compose_config(TINY + ["iterations=1", f"channels_last={setting}"]), run_dir=tmp_path,
          hooks=[capture(seen)])
    trainer = seen["trainer"]
    assert trainer.model.backbone.channels_last is expected and not trainer.channels_last
    images = torch.randn(1, 3, 64, 64)
    trainer.model.eval()
    with torch.no_grad():
        stem = trainer.model.backbone.forward_features(images)["stem"]
    assert stem.is_contiguous(memory_format=torch.channels_last) is (expected is None)


def test_checkpoint_rebuilds_the_model_from_the_file_alone(tmp_path):
    from segdense import build_model

    train(compose_config(TINY), run_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints/last.pt")
    model = build_model(**state["model_config"])
    model.load_state_dict(state["model"])  # strict


def test_tensorboard_logs_losses_lr_and_val_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_config(TINY + ["logger=[tensorboard]"]), run_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/cross_entropy", "train/lr", "train/images_per_second", "val/mIoU"} <= tags
    assert "val_IoU/background" in tags
    assert "val/image_gt_pred" in events.Tags()["images"]


def _final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints/last.pt")["model"]


RESUME = TINY + ["iterations=6", "checkpoint_interval=2", "val_interval=3", "deterministic=true"]


def test_resumed_run_ends_with_exactly_the_uninterrupted_weights(tmp_path):
    train(compose_config(RESUME), run_dir=tmp_path / "a")
    with pytest.raises(Crash):
        train(compose_config(RESUME), run_dir=tmp_path / "b", hooks=[crash_at(3)])
    assert load_checkpoint(tmp_path / "b/checkpoints/last.pt")["iteration"] == 2
    train(compose_config(RESUME + ["resume=auto"]), run_dir=tmp_path / "b")
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    train(compose_config(RESUME), run_dir=tmp_path / "a")
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # saves: last@2, best@3, then last@4 dies half-written
            f.write(b"half a checkpoint")
            raise Crash("killed while writing")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(Crash):
        train(compose_config(RESUME), run_dir=tmp_path / "b")
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    survivor = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    assert survivor["iteration"] == 2
    assert not list((tmp_path / "b/checkpoints").glob(".*tmp*"))
    train(compose_config(RESUME + ["resume=auto"]), run_dir=tmp_path / "b")
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_explicit_path_restores_iteration_and_optimizer(tmp_path, monkeypatch):
    import copy

    from segdense.engine import Trainer

    train(compose_config(TINY), run_dir=tmp_path / "a")
    seen = {}
    real_resume = Trainer.resume_from

    def spy(self, path):  # the resumed trainer's own state, before it trains on
        real_resume(self, path)
        seen["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        seen["lr"] = [group["lr"] for group in self.optimizer.param_groups]

    monkeypatch.setattr(Trainer, "resume_from", spy)
    path = tmp_path / "a/checkpoints/last.pt"
    train(compose_config(TINY + ["iterations=6", f"resume={path}"]), run_dir=tmp_path / "b", hooks=[capture(seen)])
    trainer = seen["trainer"]
    assert trainer.iteration == 6 and len(trainer.loss_history) == 2
    saved = load_checkpoint(path)["optimizer"]
    restored = seen["optimizer"]["state"]
    assert saved["state"] and restored.keys() == saved["state"].keys()
    for index, buffers in saved["state"].items():
        assert torch.equal(restored[index]["momentum_buffer"], buffers["momentum_buffer"]), index
        assert restored[index]["momentum_buffer"].abs().sum() > 0
    assert seen["lr"] == [group["lr"] for group in saved["param_groups"]]


def test_a_new_run_never_overwrites_an_existing_one(tmp_path):
    train(compose_config(TINY), run_dir=tmp_path)
    before = (tmp_path / "checkpoints/last.pt").read_bytes()
    with pytest.raises(ConfigError, match="resume=auto"):
        train(compose_config(TINY), run_dir=tmp_path)
    assert (tmp_path / "checkpoints/last.pt").read_bytes() == before


def test_resume_with_another_model_is_refused(tmp_path):
    train(compose_config(TINY), run_dir=tmp_path)
    with pytest.raises(ValueError, match="resume with the same model settings"):
        train(compose_config(TINY + ["resume=auto", "backbone.growth_rate=4"]), run_dir=tmp_path)


def test_best_checkpoint_follows_the_best_miou(tmp_path, monkeypatch):
    from segdense.engine import trainer as trainer_mod

    scores = iter([0.3, 0.6, 0.4])

    def fake_evaluate(*args, **kwargs):
        m = next(scores)
        return {"mIoU": m, "mAcc": m, "aAcc": m, "loss": 1 - m, "per_class": [{"name": "x", "IoU": m, "Acc": m}]}

    monkeypatch.setattr(trainer_mod, "evaluate_loader", fake_evaluate)
    train(compose_config(TINY + ["iterations=6"]), run_dir=tmp_path)
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert best["iteration"] == 4 and best["best_miou"] == 0.6
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_mIoU"] == 0.6 and metrics["best_iteration"] == 4
    assert metrics["last"]["mIoU"] == 0.4


def _non_finite_loss(monkeypatch, value, when):
    """Multiply the training loss by ``value`` (NaN or inf) at the 1-based training calls for which ``when(call)``
    holds (validation, which computes its loss without gradients, is not counted)."""
    from segdense.losses import criterion as criterion_mod

    real_forward = criterion_mod.Criterion.forward
    calls = {"n": 0}

    def forward(self, outputs, target):
        total, terms = real_forward(self, outputs, target)
        if not torch.is_grad_enabled():
            return total, terms
        calls["n"] += 1
        return (total * value if when(calls["n"]) else total), terms

    monkeypatch.setattr(criterion_mod.Criterion, "forward", forward)


def test_nan_loss_stops_with_the_iteration_named(tmp_path, monkeypatch):
    _non_finite_loss(monkeypatch, float("nan"), lambda call: call == 3)
    with pytest.raises(FloatingPointError, match="at iteration 3"):
        train(compose_config(TINY), run_dir=tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["iteration"] == 2  # last good state kept


def test_fp16_run_whose_every_step_overflows_stops_naming_the_iteration(tmp_path, monkeypatch):
    from segdense.errors import TrainingDivergedError

    _non_finite_loss(monkeypatch, float("inf"), lambda call: True)
    trainer = tiny_trainer(tmp_path, iterations=8, amp="fp16", checkpoint_interval=4, max_skipped_steps=3)
    assert trainer.scaler.is_enabled()  # the scaler runs on the trainer's device, CPU included
    with pytest.raises(TrainingDivergedError, match=r"3 consecutive fp16 steps were skipped.*at iteration 3"):
        trainer.fit()
    assert trainer.skipped_steps == 3 and not (tmp_path / "checkpoints").exists()


def test_fp16_isolated_skipped_steps_are_counted_and_training_goes_on(tmp_path, monkeypatch):
    _non_finite_loss(monkeypatch, float("inf"), lambda call: call % 2 == 1)  # calls 1, 3, 5
    trainer = tiny_trainer(tmp_path, iterations=6, amp="fp16", max_skipped_steps=2)
    trainer.fit()
    assert trainer.iteration == 6 and trainer.skipped_steps == 3 and trainer.consecutive_skips == 0
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["skipped_steps"] == 3


def _ddp_grad_worker(rank, world, port, images, masks, out):
    import torch.distributed as dist

    from segdense import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model("densenet_custom", {"name": "fcn", "channels": 16}, num_classes=5, output_stride=16,
                        num_units_per_block=[1, 1, 1, 1], growth_rate=8)
    model.eval()  # batch statistics would differ per process without SyncBatchNorm (CUDA only)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    half = images.shape[0] // world
    logits = ddp(images[rank * half:(rank + 1) * half])
    torch.nn.functional.cross_entropy(logits, masks[rank * half:(rank + 1) * half]).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    dist.barrier()  # neither process tears gloo down while the other still uses it (an abort, now and then)
    dist.destroy_process_group()


def test_ddp_gradients_equal_single_process_on_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    from segdense import build_model

    torch.manual_seed(1)
    images, masks = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_grad_worker, args=(2, free_port(), images, masks, str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = build_model("densenet_custom", {"name": "fcn", "channels": 16}, num_classes=5, output_stride=16,
                        num_units_per_block=[1, 1, 1, 1], growth_rate=8)
    model.eval()
    torch.nn.functional.cross_entropy(model(images), masks).backward()
    ddp_grads = torch.load(out, weights_only=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# Runs a tool with os.replace and Path.write_text (how segdense writes checkpoints, metrics.json and config.yaml)
# recording each target in <log dir>/writes_rank<RANK>.txt.
RECORD_WRITES = """
import os, pathlib, runpy, sys
log = pathlib.Path(sys.argv.pop(1)) / f"writes_rank{os.environ['RANK']}.txt"
real_replace, real_write_text = os.replace, pathlib.Path.write_text
def record(path):
    with open(log, "a") as f:
        f.write(f"{path}\\n")
def replace(src, dst, *args, **kwargs):
    record(dst)
    return real_replace(src, dst, *args, **kwargs)
def write_text(self, *args, **kwargs):
    record(self)
    return real_write_text(self, *args, **kwargs)
os.replace, pathlib.Path.write_text = replace, write_text
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_torchrun_two_cpu_processes_complete_a_run_and_only_rank_0_writes(tmp_path):
    # One torchrun, of the memory-efficient blocks (they sync their BatchNorms themselves); which blocks sync is
    # test_only_memory_efficient_blocks_sync_their_batchnorms_across_cpu_processes, plain DDP's gradients are above.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "record_writes.py").write_text(RECORD_WRITES)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        str(tmp_path / "record_writes.py"), str(tmp_path), str(ROOT / "tools" / "train.py"), *TINY,
        "logger=[tensorboard]", f"hydra.run.dir={run}",
        "backbone.memory_efficient=true",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iteration"] == 4 and not math.isnan(metrics["last"]["mIoU"])
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["config"]["batch_size"] == 4
    log = (run / "train.log").read_text()
    assert "2 process(es) = 8" in log
    # gloo: the memory-efficient dense blocks sync their BatchNorm statistics themselves
    assert "BatchNorm statistics synced across 2 processes" in log
    rank0 = {Path(line).relative_to(run).as_posix() for line in (tmp_path / "writes_rank0.txt").read_text().split()}
    assert {"checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "config.yaml"} <= rank0
    assert not (tmp_path / "writes_rank1.txt").exists()  # rank 1 wrote nothing
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_only_memory_efficient_blocks_sync_their_batchnorms_across_cpu_processes(memory_efficient, caplog):
    # gloo has no SyncBatchNorm: plain blocks train on each process's batch, memory-efficient ones sync themselves.
    from segdense.backbones.efficient_block import DenseSyncBatchNorm
    from segdense.config.train_job import training_model

    cfg = compose_config(TINY + [f"backbone.memory_efficient={str(memory_efficient).lower()}"])
    with caplog.at_level("INFO", logger="segdense.train"):
        model = training_model(cfg, 5, torch.device("cpu"), world=2)
    assert ("BatchNorm statistics synced across 2 processes" in caplog.text) == memory_efficient
    synced = [m for m in model.modules() if isinstance(m, DenseSyncBatchNorm)]
    assert len(synced) == (8 if memory_efficient else 0)  # norm1 and norm2 of each of the 4 dense layers
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def test_training_refuses_data_with_out_of_range_labels(tmp_path):
    import numpy as np
    from PIL import Image

    from data_fixtures import make_folder

    root = tmp_path / "data"
    make_folder(root, ["a", "b", "c", "d"], size=(40, 40), num_classes=3)
    bad = np.array(Image.open(root / "masks" / "b.png"))
    bad[0, 0] = 7
    Image.fromarray(bad).save(root / "masks" / "b.png")
    overrides = [o for o in TINY if o != "validate_data=off" and not o.startswith("dataset.")]
    cfg = compose_config(overrides + [
        "dataset=folder", f"dataset.root={root}", "dataset.class_names=[a,b,c]",
        "dataset.train_split=all", "dataset.val_split=all", "crop_size=[32,32]", "validate_data=quick",
    ])
    with pytest.raises(ConfigError, match=r"(?s)the training data has problems.*b\.png.*7"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_multirun_sweep_runs_every_combination(tmp_path):
    tiny = [o for o in TINY if not o.startswith("head")]
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "-m", *tiny, "head=fcn,deeplabv3", "head.channels=16",
           "iterations=2", f"hydra.sweep.dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert len(runs) == 2
    heads = {load_checkpoint(r / "checkpoints/last.pt")["model_config"]["head"]["name"] for r in runs}
    assert heads == {"fcn", "deeplabv3"}


def test_the_summary_says_what_deterministic_guarantees(tmp_path, caplog):
    from segdense.config.train_job import determinism_note

    with caplog.at_level("INFO", logger="segdense.train"):
        train(compose_config(TINY + ["iterations=1", "deterministic=true"]), run_dir=tmp_path)
    line = next(line for line in caplog.text.splitlines() if "determinism" in line)
    assert "bit-identical weights on the same CPU model" in line and "package versions" in line
    cuda = determinism_note(True, torch.device("cuda"))
    assert "only warn" in cuda and "bilinear upsampling backward" in cuda
    assert determinism_note(False, torch.device("cpu")).startswith("off")


def test_hooks_see_every_step_each_validation_and_the_end(tmp_path):
    from segdense.engine import Hook

    class Recorder(Hook):
        def __init__(self):
            self.calls = []

        def on_step(self, trainer, logged, images):
            self.calls.append(("step", trainer.iteration, images, round(logged["loss"], 6)))

        def on_validation(self, trainer, result):
            self.calls.append(("validation", trainer.iteration, result["mIoU"]))

        def on_end(self, trainer):
            self.calls.append(("end", trainer.iteration))

    recorder = Recorder()
    seen = {}
    result = train(compose_config(TINY), run_dir=tmp_path, hooks=[recorder, capture(seen)])  # 4 its, val every 2
    trainer = seen["trainer"]
    assert [c[:3] for c in recorder.calls if c[0] == "step"] == [("step", i, 4) for i in (1, 2, 3, 4)]
    assert [c[3] for c in recorder.calls if c[0] == "step"] == [round(v, 6) for v in trainer.loss_history]
    assert [c for c in recorder.calls if c[0] != "step"] == [
        ("validation", 2, trainer.history[0]["mIoU"]), ("validation", 4, result["mIoU"]), ("end", 4)]
    assert [c[0] for c in recorder.calls].index("validation") == 2  # after the second step, before the third


def test_bad_run_settings_are_reported_together_before_anything_is_built(tmp_path):
    cfg = compose_config(TINY + ["batch_size=0", "amp=fp32", "grad_clip=-1", "log_interval=0", "device=gpu"])
    with pytest.raises(ConfigError) as err:
        train(cfg, run_dir=tmp_path / "run")
    text = str(err.value)
    assert "invalid training settings" in text and "batch_size must be positive, got 0" in text
    assert "amp must be one of auto, off, bf16, fp16; got 'fp32'" in text
    assert "grad_clip must be positive or null, got -1" in text and "log_interval must be positive, got 0" in text
    assert "device must be auto, cpu, cuda or cuda:N; got 'gpu'" in text
    assert not (tmp_path / "run").exists()
