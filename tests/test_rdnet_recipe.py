"""experiment=upernet_rdnet_{tiny,small,base}_ade20k: the RDNet authors' UperNet recipe as configuration, and a
few iterations of it end to end on a miniature ADE20K tree with a tiny stand-in model."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from segdense.config.eval_job import evaluate_job
from segdense.config.group_keys import validate_config
from segdense.config.train_job import model_config, train
from segdense.engine import build_optimizer
from segdense.engine.optimizers import lr_factor
from segdense.inference.tta import SlideInference, build_infer, window_starts
from segdense.models import build_model

from tests.data_fixtures import make_ade20k
from train_utils import CONF, compose_config

# A tiny RDNet and a narrow UperNet in place of rdnet_tiny and its 512-channel head: the command line's keys win
# over the experiment's. Four stages, strides 4, 8, 16, 32 like the real ones.
STAND_IN = ["backbone=rdnet_custom", "backbone.growth_rates=[8,8,8,8]", "backbone.num_blocks_list=[1,1,1,1]",
            "backbone.is_downsample_block=[false,true,true,true]",
            "backbone.block_type=[Block,Block,BlockESE,BlockESE]", "backbone.num_init_features=8",
            "head.channels=16"]
NUM_STAGES = 4  # the stand-in's stages


def recipe(variant="tiny", extra=()):
    return compose_config([f"experiment=upernet_rdnet_{variant}_ade20k", *STAND_IN, *extra])


def test_the_tiny_recipe_holds_the_authors_values():
    cfg = recipe()
    validate_config(cfg)
    assert (cfg.dataset.name, cfg.dataset.train_split, cfg.dataset.val_split) == ("ade20k", "training", "validation")
    assert list(cfg.crop_size) == [512, 512] and cfg.batch_size * 4 == 16 and cfg.iterations == 160000
    assert cfg.amp == "fp16" and cfg.aux_loss and cfg.loss.aux_weight == 0.4 and cfg.output_stride == 32
    assert cfg.lr == 8e-5 and cfg.optimizer.name == "adamw" and list(cfg.optimizer.betas) == [0.9, 0.999]
    assert cfg.optimizer.weight_decay == 0.03 and cfg.optimizer.layer_decay == 0.9
    assert cfg.optimizer.layer_decay_num_stages is None and cfg.optimizer.no_decay_norm_bias
    assert dict(cfg.scheduler) == {"name": "poly", "power": 1.0, "warmup_iters": 1500, "warmup_ratio": 6e-6,
                                   "min_lr_ratio": 0.0}
    train_steps = OmegaConf.to_container(cfg.augmentation.train, resolve=True)
    assert train_steps[0] == {"type": "RandomResize", "scale": [2048, 512], "ratio_range": [0.5, 2.0],
                              "keep_ratio": True}
    assert train_steps[1]["cat_max_ratio"] == 0.75 and (train_steps[1]["height"], train_steps[1]["width"]) == (512, 512)
    assert train_steps[-1]["fill"] == 0 and train_steps[-1]["fill_mask"] == 255
    assert OmegaConf.to_container(cfg.augmentation.eval)[0] == {"type": "KeepRatioResize", "scale": [2048, 512]}


@pytest.mark.parametrize("variant, drop_path, weight_decay", [("tiny", 0.1, 0.03), ("small", 0.2, 0.03),
                                                              ("base", 0.2, 0.01)])
def test_each_variant_takes_its_config_files_values(variant, drop_path, weight_decay):
    cfg = compose_config([f"experiment=upernet_rdnet_{variant}_ade20k"])
    validate_config(cfg)
    assert cfg.backbone.name == f"rdnet_{variant}" and cfg.head.name == "upernet" and cfg.head.channels == 512
    assert cfg.backbone.drop_path_rate == drop_path and cfg.optimizer.weight_decay == weight_decay
    # their small/base configs pass num_layers=7 although those nets have 11 stages; tiny has 7 of its own
    assert cfg.optimizer.layer_decay_num_stages == (None if variant == "tiny" else 7)


def test_warmup_then_poly_is_mmcvs_formula():
    cfg = recipe()
    schedule = OmegaConf.to_container(cfg.scheduler)
    for t in (0, 1, 750, 1499, 1500, 1501, 80000, 159999):
        regular = (1 - t / 160000) ** 1.0   # mmcv's poly with min_lr 0
        expected = regular * (1 - (1 - t / 1500) * (1 - 6e-6)) if t < 1500 else regular   # mmcv's linear warmup
        assert lr_factor(iteration=t, total=160000, **schedule) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lr_factor(iteration=0, total=160000, **schedule) == pytest.approx(6e-6)


def get_stage_id_for_rdnet(var_name, max_stage_id):
    """The authors' function (naver-ai/rdnet segmentation/backbone/__init__.py), verbatim."""
    if var_name.startswith('backbone.timm_model.stem'):
        return 0
    elif var_name.startswith('backbone.timm_model.dense_stages_'):
        stage_id = int(var_name.split(".")[2].split("_")[-1])
        return stage_id + 1
    else:
        return max_stage_id + 1


def authors_lr_and_weight_decay(model, base_lr, base_wd, decay_rate, configured_num_layers):
    """RDNetLearningRateDecayOptimizerConstructor.add_params transcribed without mmcv, on the model's parameters
    renamed to their spelling (timm features_only under ``backbone.timm_model``: ``dense_stages.N`` is
    ``dense_stages_N``); the heads' names need no renaming, anything outside the backbone is "else" for them."""
    num_layers = configured_num_layers + 2
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        theirs = name
        if name.startswith("backbone."):
            theirs = "backbone.timm_model." + name[len("backbone."):].replace("dense_stages.", "dense_stages_", 1)
        if len(param.shape) == 1 or theirs.endswith('.bias') or theirs in ('pos_embed', 'cls_token'):
            this_weight_decay = 0.
        else:
            this_weight_decay = base_wd
        layer_id = get_stage_id_for_rdnet(theirs, num_layers)
        scale = decay_rate ** (num_layers - layer_id - 1)
        out[name] = (scale * base_lr, this_weight_decay)
    return out


def assert_groups_are_the_authors(model, optimizer, configured_num_layers, weight_decay):
    theirs = authors_lr_and_weight_decay(model, 8e-5, weight_decay, 0.9, configured_num_layers)
    owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(owner) == len(theirs) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        group = owner[id(p)]
        assert group["lr"] == pytest.approx(theirs[name][0], rel=1e-12), name
        assert group["weight_decay"] == theirs[name][1], name
        assert group["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("variant", ["tiny", "small"])
def test_the_recipes_param_groups_are_the_authors_on_the_stand_in(variant):
    cfg = recipe(variant)
    model = build_model(**model_config(cfg, num_classes=150))
    optimizer = build_optimizer(model=model, lr=cfg.lr, **OmegaConf.to_container(cfg.optimizer))
    assert_groups_are_the_authors(model, optimizer, NUM_STAGES if variant == "tiny" else 7, 0.03)


@pytest.mark.parametrize("variant, num_stages, weight_decay", [("tiny", 7, 0.03), ("small", 11, 0.03),
                                                               ("base", 11, 0.01)])
def test_the_real_models_param_groups_are_the_authors(variant, num_stages, weight_decay):
    cfg = compose_config([f"experiment=upernet_rdnet_{variant}_ade20k"])
    with torch.device("meta"):   # names and shapes are all the rule reads
        model = build_model(**model_config(cfg, num_classes=150))
    assert model.backbone.num_stages == num_stages and model.aux_head is not None
    optimizer = build_optimizer(model=model, lr=cfg.lr, **OmegaConf.to_container(cfg.optimizer))
    assert_groups_are_the_authors(model, optimizer, 7, weight_decay)   # their num_layers=7 in all three configs
    scales = {g["name"]: g["lr_scale"] for g in optimizer.param_groups}
    assert scales["layer_0_decay"] == pytest.approx(0.9 ** 8) and scales["head_decay"] == pytest.approx(0.9 ** -2)
    assert scales[f"layer_{num_stages}_decay"] == pytest.approx(0.9 ** (7 - (num_stages - 1)))  # 0.9 / 0.9^-3


def test_slide_evaluation_uses_the_authors_window_and_stride():
    cfg = recipe()
    slide = build_infer("slide", crop_size=cfg.crop_size, stride=[341, 341])   # the documented eval command
    assert isinstance(slide, SlideInference) and (slide.crop, slide.stride) == ((512, 512), (341, 341))
    assert build_infer("slide", crop_size=cfg.crop_size).stride == (341, 341)   # also the default: 2/3 of the window
    # mmseg's windows: ceil((683 - 512) / 341) + 1 = 2 per 683-pixel side, the last flush with the edge
    assert window_starts(683, 512, 341) == [0, 171] and window_starts(512, 512, 341) == [0]


@pytest.fixture
def ade_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    make_ade20k(root, size=(24, 32))
    return root


SMALL_RUN = ["crop_size=[32,32]", "batch_size=2", "iterations=3", "val_interval=3", "checkpoint_interval=3",
             "log_interval=1", "num_workers=0", "logger=[]", "report=false", "amp=off",
             "augmentation.train.0.scale=[128,32]", "augmentation.eval.0.scale=[128,32]", "scheduler.warmup_iters=2"]


def test_the_recipe_trains_end_to_end_and_evaluates_in_slide_mode(ade_root, tmp_path, caplog):
    caplog.set_level("INFO", logger="segdense.train")
    seen = {}

    def capture(trainer, iteration):
        seen.setdefault("lrs", []).append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})
        seen["trainer"] = trainer

    cfg = recipe(extra=[f"dataset.root={ade_root}", *SMALL_RUN])
    result = train(cfg, run_dir=tmp_path / "run", hooks=[capture])
    trainer = seen["trainer"]
    assert trainer.model.aux_head is not None and type(trainer.optimizer) is torch.optim.AdamW
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {f"layer_{i}_{kind}" for i in range(5) for kind in ("decay", "no_decay")} | \
        {"head_decay", "head_no_decay"}
    factor = lr_factor("poly", 3, 3, warmup_iters=2, warmup_ratio=6e-6, power=1.0, min_lr_ratio=0.0)
    for group in groups.values():   # after the last step: base rate x lr_scale x the schedule's factor
        assert group["lr"] == pytest.approx(8e-5 * group["lr_scale"] * factor, abs=1e-18)
        assert group["initial_lr"] == pytest.approx(8e-5 * group["lr_scale"])
    first = seen["lrs"][0]
    assert first["head_decay"] / first["layer_4_decay"] == pytest.approx(0.9 ** -3)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and result is not None
    assert "ade20k: 3 train / 2 val images, 150 classes (wall, building, sky, floor, " in caplog.text
    assert "... (150 in all)" in caplog.text and "adamw lr 8e-05 (stage-wise decay 0.9), poly" in caplog.text

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        eval_cfg = compose(config_name="eval", overrides=[
            f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "mode=slide", "stride=[11,11]",
            "progress=false", "num_workers=0", f"output_dir={tmp_path / 'eval'}"])
    evaluate_job(eval_cfg)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"] == "ade20k" and metrics["num_images"] == 2 and len(metrics["per_class"]) == 150
    assert metrics["per_class"][0]["name"] == "wall"
    assert max(Image.open(tmp_path / "eval" / "confusion.png").size) < 3000   # 150 classes: a capped figure
