"""``python tools/train.py -m hparams_search=synthetic``: an Optuna study end to end, each trial a run in one
MLflow store; the study's best value is the best trial's validation mIoU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_optuna_study_on_the_synthetic_set_runs_end_to_end_with_each_trial_in_mlflow(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "-m", "hparams_search=synthetic", "logger=[mlflow]",
           "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = sorted(sweep.glob("*_densenet_custom_fcn_os16"))
    assert len(trials) == 3
    miou = {t.name: json.loads((t / "metrics.json").read_text())["last"]["mIoU"] for t in trials}
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(miou.values()))
    assert set(result["best_params"]) == {"lr", "optimizer.weight_decay", "head.channels"}
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("segdense").experiment_id])
    assert {r.info.run_name: r.data.metrics["val/mIoU"] for r in runs} == pytest.approx(miou)
    lrs = {r.info.run_name: float(r.data.params["lr"]) for r in runs}
    assert len(set(lrs.values())) == 3  # each trial its own sampled lr
    assert all(r.info.status == "FINISHED" for r in runs)


def test_the_rdnet_search_space_composes_adamw_with_layer_decay():
    from hydra import compose, initialize_config_dir

    from segdense.config.schema import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=rdnet"], return_hydra_config=True)
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.layer_decay == 0.9 and cfg.backbone.name == "rdnet_tiny"
    assert dict(cfg.hydra.sweeper.params) == {"lr": "tag(log, interval(2e-5, 1e-3))",
                                             "optimizer.weight_decay": "tag(log, interval(1e-3, 0.1))"}
