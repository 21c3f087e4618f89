"""Weight EMA: the trainer's average equals timm's ModelEmaV3 on the same model and steps (BatchNorm buffers
included), is what validation scores and checkpoints hold as ``model``, and resumes bit for bit."""
import copy
import json

import pytest
import torch
from timm.utils import ModelEmaV3

from segdense.config.train_job import train
from segdense.engine.ema import WeightEMA
from segdense.errors import ConfigError
from segdense.runtime import load_checkpoint

from train_utils import TINY, compose_config, tiny_trainer


class Crash(Exception):
    pass


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("options", [dict(decay=0.9), dict(decay=0.99, use_warmup=True, warmup_gamma=1.0,
                                                          warmup_power=0.75)])
def test_the_average_equals_timms_model_ema_v3_on_the_same_steps(tmp_path, options):
    trainer = tiny_trainer(tmp_path, 6, trainer_options={"ema": WeightEMA(**options), "stop_signals": ()})
    reference = ModelEmaV3(copy.deepcopy(trainer.model), **options)
    trainer.hooks.append(_after_step(lambda t: reference.update(t.model, step=t.iteration)))
    trainer.fit()
    ours, theirs = trainer.ema.module.state_dict(), reference.module.state_dict()
    assert any("running_mean" in key for key in ours)  # BatchNorm statistics are averaged too
    moved = max(float((ours[k].double() - trainer.model.state_dict()[k].double()).abs().max()) for k in ours)
    assert moved > 1e-4  # the average lags the trained weights
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-7, msg=key)


def _after_step(fn):
    from segdense.engine import Hook

    class After(Hook):
        def on_step(self, trainer, logged, images):
            fn(trainer)

    return After()


def test_warmup_decay_follows_timm():
    ours = WeightEMA(decay=0.999, use_warmup=True, warmup_gamma=2.0, warmup_power=0.7)
    theirs = ModelEmaV3(torch.nn.Linear(1, 1), decay=0.999, use_warmup=True, warmup_gamma=2.0, warmup_power=0.7)
    assert [ours.decay_at(s) for s in range(1, 50)] == [theirs.get_decay(s) for s in range(1, 50)]


EMA = TINY + ["iterations=6", "checkpoint_interval=2", "val_interval=3", "deterministic=true", "ema.decay=0.5"]


@pytest.mark.parametrize("options", [[], ["backbone.memory_efficient=true"], ["amp=bf16"]])
def test_checkpoints_hold_the_average_as_model_and_the_trained_weights_beside_it(tmp_path, options):
    seen = {}
    train(compose_config(EMA + options), run_dir=tmp_path, hooks=[lambda t, i: seen.setdefault("trainer", t)])
    trainer = seen["trainer"]
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    for key, value in trainer.ema.module.state_dict().items():
        assert torch.equal(last["model"][key], value)
        assert torch.equal(last["raw_model"][key], trainer.model.state_dict()[key])
    assert any(not torch.equal(last["model"][k], last["raw_model"][k]) for k in last["model"])
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert set(history[-1]["raw"]) == {"mIoU", "mAcc", "aAcc", "loss"}  # the trained weights' scores beside
    assert history[-1]["loss"] != history[-1]["raw"]["loss"]


def test_an_interrupted_and_resumed_ema_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    def crash_at_3(trainer, iteration):
        if iteration == 3:
            raise Crash

    train(compose_config(EMA), run_dir=tmp_path / "a")
    with pytest.raises(Crash):
        train(compose_config(EMA), run_dir=tmp_path / "b", hooks=[crash_at_3])
    train(compose_config(EMA + ["resume=auto"]), run_dir=tmp_path / "b")
    a, b = (load_checkpoint(tmp_path / run / "checkpoints/last.pt") for run in ("a", "b"))
    for part in ("model", "raw_model"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_a_decay_outside_zero_to_one_is_refused():
    with pytest.raises(ConfigError, match=r"ema.decay must be in \[0, 1\) or null \(no EMA\), got 1.5"):
        WeightEMA(decay=1.5)
