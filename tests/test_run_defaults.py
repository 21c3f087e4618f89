"""Defaults that fit the machine and the backbone: worker processes from the cores available, and a note when a
backbone's own recipe uses another optimizer than the run."""
import os

import pytest

from segdense.config.train_job import recipe_note, train_settings
from segdense.data import resolve_num_workers
from segdense.errors import ConfigError

from train_utils import CONF, compose_config


@pytest.mark.parametrize("cores, workers", [(2, 2), (5, 5), (64, 8)])
def test_auto_workers_are_the_cores_available_capped_at_8(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert resolve_num_workers("auto") == workers


def test_the_default_is_auto_and_a_count_is_kept(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    cfg = compose_config(["dataset=voc"])  # a dataset that does not set num_workers itself
    assert cfg.num_workers == "auto" and train_settings(cfg).num_workers == 2
    assert train_settings(compose_config(["num_workers=3"])).num_workers == 3


def test_a_bad_worker_count_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="num_workers must be auto or a count >= 0, got 'many'"):
        train_settings(compose_config(["num_workers=many"]))


@pytest.mark.parametrize("backbone, optimizer, expected", [
    ("rdnet_tiny", "sgd", "rdnet_tiny is trained with AdamW with layer decay by its authors, this run with sgd: "
                          "experiment=upernet_rdnet_tiny_ade20k carries that recipe"),
    ("rdnet_base", "rmsprop", "experiment=upernet_rdnet_base_ade20k"),
    ("rdnet_large", "sgd", "experiment=upernet_rdnet_tiny_ade20k"),
    ("fcdensenet103", "sgd", "fcdensenet103 is trained with RMSprop by its authors, this run with sgd: "
                             "experiment=fcdensenet103_camvid carries that recipe"),
    ("rdnet_tiny", "adamw", ""),
    ("fcdensenet56", "rmsprop", ""),
    ("densenet121", "sgd", ""),
])
def test_a_backbone_with_a_recipe_of_its_own_is_named_with_its_experiment(backbone, optimizer, expected):
    note = recipe_note(backbone, optimizer)
    assert (expected in note) if expected else note == ""


def test_evaluation_loads_with_as_many_workers_as_training(monkeypatch, tiny_checkpoint, tmp_path):
    from hydra import compose, initialize_config_dir

    import segdense.config.eval_job as eval_job

    class Loaded(Exception):
        pass

    def fake_evaluate(*args, num_workers, **kwargs):
        raise Loaded(num_workers)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(eval_job, "evaluate_model", fake_evaluate)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"checkpoint={tiny_checkpoint}", f"output_dir={tmp_path}"])
    assert cfg.num_workers == compose_config(["dataset=voc"]).num_workers == "auto"
    with pytest.raises(Loaded) as loaded:
        eval_job.evaluate_job(cfg)
    assert loaded.value.args == (3,)
    cfg.num_workers = "many"
    with pytest.raises(ConfigError, match="num_workers must be auto or a count >= 0, got 'many'"):
        eval_job.evaluate_job(cfg)
