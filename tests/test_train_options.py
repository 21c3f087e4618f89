"""Documented training options, each run on the tiny configuration and checked for its effect."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segdense.config.train_job import describe_weights, train
from segdense.engine import Trainer
from segdense.runtime import load_checkpoint
from segdense.losses import build_loss

from train_utils import TINY, compose_config


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def learning_rates_used(monkeypatch) -> list:
    """Records the learning rate of every optimizer step (all parameter groups share it at head_lr_mult=1)."""
    used = []
    real_step = Trainer._step

    def step(self, loader):
        used.append({group["lr"] for group in self.optimizer.param_groups})
        return real_step(self, loader)

    monkeypatch.setattr(Trainer, "_step", step)
    return used


def capture(store):
    def hook(trainer, iteration):
        store["trainer"] = trainer

    return hook


def test_cosine_schedule_follows_half_a_cosine(tmp_path, monkeypatch):
    used = learning_rates_used(monkeypatch)
    train(compose_config(TINY + ["scheduler=cosine", "lr=0.01"]), run_dir=tmp_path)
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert [lr.pop() for lr in used] == pytest.approx(expected)


def test_poly_warmup_ramps_up_linearly_then_decays(tmp_path, monkeypatch):
    used = learning_rates_used(monkeypatch)
    train(compose_config(TINY + ["scheduler=poly", "scheduler.warmup_iters=2", "lr=0.01"]), run_dir=tmp_path)
    poly = [(1 - t / 4) ** 0.9 * (1 - 0.01) + 0.01 for t in range(4)]  # conf/scheduler/poly.yaml
    warmup = [0.1 + 0.9 * t / 2 for t in range(2)] + [1.0, 1.0]  # from warmup_ratio 0.1 over 2 iterations
    assert [lr.pop() for lr in used] == pytest.approx([0.01 * p * w for p, w in zip(poly, warmup)])


def test_adamw_decays_weights_but_not_norms_and_biases(tmp_path):
    seen = {}
    train(compose_config(TINY + ["optimizer=adamw", "lr=0.001"]), run_dir=tmp_path, hooks=[capture(seen)])
    trainer = seen["trainer"]
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, p in trainer.model.named_parameters():
        is_norm_or_bias = p.ndim == 1
        assert decay[id(p)] == (0.0 if is_norm_or_bias else 0.01), name
    assert all("exp_avg_sq" in state for state in optimizer.state.values()) and optimizer.state


def ohem_reference(logits, target):
    return build_loss("ohem_cross_entropy", thresh=0.7, min_kept=100000)(logits, target)  # conf/loss/ohem.yaml


def ce_dice_reference(logits, target):
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    return ce + 0.5 * build_loss("dice")(logits, target)  # conf/loss/ce_dice.yaml


@pytest.mark.parametrize("loss, expected", [("ohem", ohem_reference), ("ce_dice", ce_dice_reference)],
                         ids=["ohem", "ce_dice"])
def test_loss_options_build_the_documented_criterion(loss, expected, tmp_path):
    seen = {}
    train(compose_config(TINY + [f"loss={loss}", "iterations=1"]), run_dir=tmp_path, hooks=[capture(seen)])
    criterion = seen["trainer"].criterion
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 12, 12, generator=generator)
    target = torch.randint(0, 5, (2, 12, 12), generator=generator)
    target[:, 0] = 255
    total, logs = criterion(logits, target)
    assert total.item() == pytest.approx(float(expected(logits, target)), rel=1e-5)
    assert set(logs) - {"total"} == ({"ohem_cross_entropy"} if loss == "ohem" else {"cross_entropy", "dice"})
    assert all(math.isfinite(v) for v in seen["trainer"].loss_history)


def parameter_change(monkeypatch, overrides, run_dir) -> float:
    """The norm of the change of all parameters over one SGD step (momentum buffer = gradient at step one)."""
    before = {}
    real_fit = Trainer.fit

    def fit(self):
        before.update({n: p.detach().clone() for n, p in self.model.named_parameters()})
        return real_fit(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    seen = {}
    train(compose_config(TINY + ["iterations=1", "lr=0.1", "optimizer.weight_decay=0", *overrides]), run_dir=run_dir,
          hooks=[capture(seen)])
    after = dict(seen["trainer"].model.named_parameters())
    return float(torch.sqrt(sum(((after[n].detach() - p) ** 2).sum() for n, p in before.items())))


def test_grad_clip_bounds_the_gradient_norm_of_a_step(tmp_path, monkeypatch):
    clipped = parameter_change(monkeypatch, ["grad_clip=0.001"], tmp_path / "clipped")
    free = parameter_change(monkeypatch, [], tmp_path / "free")
    assert clipped == pytest.approx(0.1 * 0.001, rel=1e-3)  # lr x clipped gradient norm
    assert free > 100 * clipped


def test_compile_true_trains_the_compiled_model_like_eager(tmp_path, monkeypatch):
    real_compile = torch.compile
    calls = []

    def aot_eager(model, **kwargs):  # the default inductor backend needs a C++ toolchain and minutes
        calls.append(model)
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", aot_eager)
    base = TINY + ["iterations=2", "deterministic=true", "head.dropout=0"]
    seen = {}
    train(compose_config(base + ["compile=true"]), run_dir=tmp_path / "compiled", hooks=[capture(seen)])
    assert len(calls) == 1 and type(seen["trainer"].train_model).__name__ == "OptimizedModule"
    train(compose_config(base), run_dir=tmp_path / "eager")
    compiled = load_checkpoint(tmp_path / "compiled/checkpoints/last.pt")["model"]
    eager = load_checkpoint(tmp_path / "eager/checkpoints/last.pt")["model"]
    assert compiled.keys() == eager.keys()
    for key in compiled:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)


def test_validate_data_full_finds_a_bad_mask_that_a_quick_sample_misses(tmp_path):
    from PIL import Image

    from segdense.errors import ConfigError
    from segdense.data import FolderDataset, validate_dataset

    from data_fixtures import make_folder

    root = tmp_path / "data"
    names = [f"{i:02d}" for i in range(70)]
    make_folder(root, names, size=(16, 16), num_classes=3)
    sampled = set(np.random.default_rng(0).choice(70, size=64, replace=False).tolist())
    bad = names[min(set(range(70)) - sampled)]
    mask = np.array(Image.open(root / "masks" / f"{bad}.png"))
    mask[0, 0] = 9
    Image.fromarray(mask).save(root / "masks" / f"{bad}.png")
    assert validate_dataset(FolderDataset(root, ["a", "b", "c"]), sample=64, seed=0).ok  # quick misses it
    overrides = [o for o in TINY if o != "validate_data=off" and not o.startswith("dataset.")]
    cfg = compose_config(overrides + ["dataset=folder", f"dataset.root={root}", "dataset.class_names=[a,b,c]",
                                      "dataset.train_split=all", "dataset.val_split=all", "validate_data=full"])
    with pytest.raises(ConfigError, match=rf"(?s)checked 70 of 70.*{bad}\.png: label values \[9\]"):
        train(cfg, run_dir=tmp_path / "run")


def test_resume_auto_on_an_empty_run_dir_starts_a_new_run(tmp_path, caplog):
    with caplog.at_level("INFO", logger="segdense.train"):
        train(compose_config(TINY + ["resume=auto"]), run_dir=tmp_path)
    assert f"no checkpoint in {tmp_path} yet, starting a new run" in caplog.text
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["iteration"] == 4


class Crash(Exception):
    """Stands for the process dying after an iteration."""


def test_resume_with_worker_processes_ends_with_the_uninterrupted_weights(tmp_path):
    def crash_at_3(trainer, iteration):
        if iteration == 3:
            raise Crash

    config = TINY + ["iterations=6", "checkpoint_interval=2", "val_interval=3", "deterministic=true", "num_workers=2"]
    train(compose_config(config), run_dir=tmp_path / "a")
    with pytest.raises(Crash):
        train(compose_config(config), run_dir=tmp_path / "b", hooks=[crash_at_3])
    train(compose_config(config + ["resume=auto"]), run_dir=tmp_path / "b")
    a = load_checkpoint(tmp_path / "a/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "b/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_summary_says_where_the_first_weights_come_from():
    cfg = compose_config(TINY)
    assert describe_weights(cfg, None) == "random (backbone.pretrained not set)"
    cfg.backbone.pretrained = "/w/densenet121.pth"
    assert describe_weights(cfg, None) == "backbone from /w/densenet121.pth, head random"
    cfg.init_from = "run1/checkpoints/best.pt"
    assert describe_weights(cfg, None) == "the whole model from run1/checkpoints/best.pt (init_from)"
    assert describe_weights(cfg, Path("run2/checkpoints/last.pt")) == "resumed from run2/checkpoints/last.pt"

