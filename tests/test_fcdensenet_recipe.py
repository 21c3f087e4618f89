"""experiment=fcdensenet103_camvid (+ _finetune): the paper's protocol as configuration, RMSprop with Lasagne's
constants, the per-epoch exponential decay, and init_from (a new run from another run's weights)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from segdense.config.group_keys import validate_config
from segdense.config.overrides import check_overrides
from segdense.config.schema import register_schema
from segdense.config.train_job import initial_weights, model_config, train
from segdense.data import build_transforms
from segdense.engine import build_optimizer, build_scheduler, save_checkpoint
from segdense.engine.checkpoint import init_model_weights
from segdense.errors import CheckpointError, MissingFileError
from segdense.losses import build_criterion
from segdense.models import build_model
from segdense.runtime import load_checkpoint

from tests.data_fixtures import make_camvid
from train_utils import CONF, TINY, compose_config

# The recipe composed on a small stand-in model: the command line's backbone/head win over the experiment's.
STAND_IN = ["backbone=custom", "backbone.num_units_per_block=[1,1,1,1]", "backbone.growth_rate=8", "head=fcn",
            "head.channels=16", "head.num_convs=1"]


def recipe(name="fcdensenet103_camvid", extra=()):
    return compose_config([f"experiment={name}", *STAND_IN, *extra])


def optimizer_and_schedule(cfg):
    model = build_model(**model_config(cfg, num_classes=11))
    optimizer = build_optimizer(model=model, lr=cfg.lr, **OmegaConf.to_container(cfg.optimizer))
    scheduler = build_scheduler(optimizer=optimizer, total_iterations=cfg.iterations,
                                **OmegaConf.to_container(cfg.scheduler))
    return model, optimizer, scheduler


def test_the_recipe_is_the_papers_protocol():
    cfg = recipe()
    validate_config(cfg)
    assert cfg.dataset.name == "camvid" and (cfg.dataset.train_split, cfg.dataset.val_split) == ("train", "val")
    assert list(cfg.crop_size) == [224, 224] and cfg.batch_size == 3 and cfg.lr == 1e-3
    assert [step["type"] for step in cfg.augmentation.train] == ["PadIfNeeded", "RandomCrop", "HorizontalFlip",
                                                                 "Normalize"]
    assert cfg.loss.class_weight is None and [t.name for t in cfg.loss.terms] == ["cross_entropy"]
    criterion = build_criterion(OmegaConf.to_container(cfg.loss.terms), aux_weight=cfg.loss.aux_weight, num_classes=11)
    assert criterion.ignore_index == 255  # CamVid's void (11) is read as 255
    assert (cfg.scheduler.name, cfg.scheduler.gamma, cfg.scheduler.every) == ("exponential", 0.995, 367 // 3)
    assert cfg.iterations == 500 * 122 and cfg.val_interval == 5 * 122


def test_the_recipe_trains_on_224_crops_of_camvid_frames():
    cfg = recipe()
    transform = build_transforms(OmegaConf.to_container(cfg.augmentation.train, resolve=True), seed=0)
    image, mask = transform(np.zeros((360, 480, 3), np.uint8), np.zeros((360, 480), np.int64))
    assert tuple(image.shape) == (3, 224, 224) and tuple(mask.shape) == (224, 224)


def test_the_recipe_uses_rmsprop_with_lasagnes_constants_and_decays_only_conv_weights():
    _, optimizer, _ = optimizer_and_schedule(recipe())
    assert type(optimizer) is torch.optim.RMSprop
    by_name = {group["name"]: group for group in optimizer.param_groups}
    for group in by_name.values():
        assert (group["lr"], group["alpha"], group["eps"], group["momentum"]) == (1e-3, 0.9, 1e-6, 0.0)
    assert by_name["backbone"]["weight_decay"] == by_name["head"]["weight_decay"] == 2e-4
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0  # BatchNorm and biases, as Lasagne's regularizable
    assert all(p.dim() == 4 for p in by_name["backbone"]["params"])


def test_one_rmsprop_step_follows_the_formula():
    model, optimizer, _ = optimizer_and_schedule(recipe())
    conv = next(p for p in model.backbone.parameters() if p.dim() == 4)
    norm = next(p for p in model.backbone.parameters() if p.dim() == 1)
    before = {"conv": conv.detach().clone(), "norm": norm.detach().clone()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01)
    optimizer.step()
    for name, p, decay in (("conv", conv, 2e-4), ("norm", norm, 0.0)):
        g = 0.01 + decay * before[name]  # weight decay enters the gradient, as Lasagne's L2 term does
        expected = before[name] - 1e-3 * g / (torch.sqrt((1 - 0.9) * g * g) + 1e-6)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-8)


def test_the_learning_rate_falls_by_0995_once_per_epoch():
    _, optimizer, scheduler = optimizer_and_schedule(recipe())
    seen = []
    for _ in range(3 * 122 + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == seen[121] == 1e-3
    assert seen[122] == seen[243] == pytest.approx(1e-3 * 0.995, rel=1e-12)
    assert seen[244] == pytest.approx(1e-3 * 0.995 ** 2, rel=1e-12)
    assert seen[366] == pytest.approx(1e-3 * 0.995 ** 3, rel=1e-12)


def test_a_bad_exponential_schedule_is_refused():
    _, optimizer, _ = optimizer_and_schedule(recipe())
    with pytest.raises(ValueError, match="0 < gamma <= 1 and every >= 1, got gamma=1.5, every=1"):
        build_scheduler("exponential", optimizer, total_iterations=10, gamma=1.5)


def test_the_finetune_stage_is_whole_frames_at_batch_1_and_lr_1e4_from_given_weights():
    cfg = recipe("fcdensenet103_camvid_finetune")
    validate_config(cfg)
    assert cfg.init_from == "outputs/fcdensenet103_camvid/checkpoints/best.pt"  # where the first stage writes it
    assert cfg.batch_size == 1 and cfg.lr == 1e-4 and list(cfg.crop_size) == [360, 480]
    assert [step["type"] for step in cfg.augmentation.train] == ["HorizontalFlip", "Normalize"]
    assert (cfg.optimizer.name, cfg.optimizer.alpha, cfg.optimizer.eps) == ("rmsprop", 0.9, 1e-6)
    assert (cfg.scheduler.gamma, cfg.scheduler.every) == (0.995, 367)


def test_the_finetune_stage_finds_the_first_stages_best_checkpoint():
    register_schema()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        first, second = (compose(config_name="config", overrides=[f"experiment={name}", *STAND_IN],
                                 return_hydra_config=True)
                         for name in ("fcdensenet103_camvid", "fcdensenet103_camvid_finetune"))
    assert second.init_from == f"{first.hydra.run.dir}/checkpoints/best.pt"
    assert second.hydra.run.dir != first.hydra.run.dir


def test_experiment_is_a_known_key_on_the_command_line():
    check_overrides("config", ["experiment=fcdensenet103_camvid", "init_from=x.pt"])


def test_the_recipe_composes_with_fcdensenet103_and_the_tiramisu_head():
    # Needs conf/backbone/fcdensenet103.yaml and conf/head/tiramisu.yaml (the FC-DenseNet model's options).
    cfg = compose_config(["experiment=fcdensenet103_camvid"])
    validate_config(cfg)
    assert cfg.backbone.name == "fcdensenet103" and cfg.head.name == "tiramisu"


def tiny_model(num_classes: int, seed: int):
    torch.manual_seed(seed)
    cfg = compose_config(TINY)
    return build_model(**model_config(cfg, num_classes))


def saved(model, path: Path) -> Path:
    return save_checkpoint({"model": model.state_dict(), "model_config": model.model_config}, path)


def test_init_from_loads_every_weight_of_the_checkpoint(tmp_path):
    source, target = tiny_model(5, seed=1), tiny_model(5, seed=2)
    init_model_weights(target, saved(source, tmp_path / "source.pt"))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_init_from_a_checkpoint_of_another_class_count_names_the_mismatch(tmp_path):
    path = saved(tiny_model(11, seed=1), tmp_path / "camvid.pt")
    with pytest.raises(CheckpointError, match=r"init_from=.*camvid.pt: its weights do not fit this model \(the "
                                              r"checkpoint's is densenet_custom \+ fcn, 11 classes, this run's "
                                              r"densenet_custom \+ fcn, 5 classes\): head\.classifier\.1\.weight: "
                                              r"checkpoint \(11, 16, 1, 1\), model \(5, 16, 1, 1\)"):
        init_model_weights(tiny_model(5, seed=2), path)


def test_init_from_a_missing_file_says_what_was_expected(tmp_path):
    with pytest.raises(MissingFileError, match=r"init_from=.*stage1.pt: no such checkpoint file \(expected a "
                                               r"segdense checkpoint"):
        init_model_weights(tiny_model(5, seed=2), tmp_path / "stage1.pt")


def test_a_resumed_run_ignores_init_from():
    initial_weights("no/such/checkpoint.pt", tiny_model(5, seed=2), resume_path=Path("run/checkpoints/last.pt"))


def test_training_starts_from_the_init_from_weights(tmp_path):
    path = saved(tiny_model(5, seed=1), tmp_path / "stage1.pt")
    train(compose_config(TINY + ["iterations=1", "lr=0", f"init_from={path}"]), run_dir=tmp_path / "stage2")
    start, after = load_checkpoint(path)["model"], load_checkpoint(tmp_path / "stage2/checkpoints/last.pt")["model"]
    for key, value in start.items():
        if value.is_floating_point() and "running" not in key:  # BatchNorm statistics move even at lr 0
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_the_recipe_trains_on_a_camvid_tree_with_segnet_weights(tmp_path):
    root = tmp_path / "CamVid"
    make_camvid(root, size=(24, 32))
    cfg = recipe(extra=[f"dataset.root={root}", "crop_size=[16,16]", "iterations=2", "val_interval=2",
                        "checkpoint_interval=2", "val_batch_size=1", "num_workers=0", "logger=[]",
                        "report=false", "loss.class_weight=segnet"])
    result = train(cfg, run_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert state["iteration"] == 2 and state["dataset"]["class_names"][-1] == "Bicyclist"
    assert state["config"]["loss"]["class_weight"][6] == 9.6446  # SignSymbol
    assert state["scheduler"]["last_epoch"] == 2 and state["optimizer"]["param_groups"][0]["alpha"] == 0.9
    assert len(result["per_class"]) == 11
