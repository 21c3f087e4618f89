"""A checkpoint written by segdense 0.1.0 before the architecture redesign (issue 15) still loads, evaluates and
resumes. tests/data/checkpoint_v0.1.0.pt: densenet_custom (units [1, 1], growth 4) + FCN, output stride 8, trained
2 iterations on 4 synthetic 32x32 images; checkpoint_v0.1.0_logits.pt: that model's logits on a fixed input."""
import json
from pathlib import Path

import torch

from segdense.config.eval_job import evaluate_job
from segdense.config.train_job import train
from segdense.inference import load_model

from train_utils import CONF, compose_config

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "data" / "checkpoint_v0.1.0.pt"
OLD_LOGITS = ROOT / "tests" / "data" / "checkpoint_v0.1.0_logits.pt"
# The command line that wrote the checkpoint (with iterations=2), so a resumed run composes the same model.
RECIPE = [
    "backbone=custom", "backbone.num_units_per_block=[1,1]", "backbone.growth_rate=4", "head=fcn", "head.channels=8",
    "head.num_convs=1", "dataset.num_samples=4", "dataset.image_size=32", "crop_size=[32,32]", "batch_size=2",
    "val_batch_size=2", "val_interval=2", "checkpoint_interval=2", "log_interval=1", "num_workers=0",
    "validate_data=off", "logger=[]", "report=false", "output_stride=8",
]


def compose_eval(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def test_old_checkpoint_rebuilds_the_same_model_and_logits():
    model = load_model(OLD)
    stored = torch.load(OLD_LOGITS, weights_only=True)
    assert model.model_config["backbone"] == {  # the old flat model_config, read as today's backbone block
        "name": "densenet_custom", "output_stride": 8, "initial_output_stride": 4, "num_units_per_block": [1, 1],
        "growth_rate": 4, "theta": 0.5, "bn_size": 4, "drop_rate": 0.0, "num_init_features": None,
        "memory_efficient": False, "norm_eval": False, "frozen_stages": -1}  # later options at their defaults
    assert model.model_config["head"] == {"name": "fcn", "channels": 8, "num_convs": 1, "dropout": 0.1}
    assert model.class_names == ["background", "circle", "rectangle", "triangle", "ring"]
    with torch.no_grad():
        logits = model(stored["input"])
    torch.testing.assert_close(logits, stored["logits"], rtol=1e-5, atol=1e-5)


# The evaluation and training jobs that tools/eval.py and tools/train.py run (their command lines run elsewhere).
def test_old_checkpoint_evaluates_to_its_recorded_validation_score(tmp_path):
    evaluate_job(compose_eval([f"checkpoint={OLD}", f"output_dir={tmp_path}", "progress=false", "num_workers=0"]))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    recorded = torch.load(OLD, weights_only=True)["history"][-1]
    assert metrics["num_images"] == 4
    assert abs(metrics["mIoU"] - recorded["mIoU"]) < 1e-6  # the same val split the training run scored


def test_old_checkpoint_resumes_at_its_iteration(tmp_path):
    train(compose_config([*RECIPE, "iterations=4", f"resume={OLD}"]), run_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert [h["iteration"] for h in state["history"]] == [2, 4]  # the old run's validation is kept
