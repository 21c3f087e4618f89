"""Evaluate a checkpoint: ``python tools/eval.py checkpoint=PATH [dataset=NAME dataset.root=DIR] [key=value ...]``.

Examples: ``python tools/eval.py checkpoint=run/checkpoints/best.pt``, ``... mode=slide crop_size=[512,1024]``,
``... scales=[0.5,0.75,1.0,1.25,1.5,1.75] flip=true``, ``... save_predictions=preds``, ``checkpoint=model.onnx``
(an export, run with ONNX Runtime). See conf/eval.yaml.
"""
import sys

import hydra
from omegaconf import DictConfig

from segdense.config.cli import exit_without_final_collection, run_tool
from segdense.config.eval_job import evaluate_job
from segdense.config.overrides import exit_on_unknown_keys


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    return float(run_tool(evaluate_job, cfg)["mIoU"])


if __name__ == "__main__":
    exit_on_unknown_keys("eval", sys.argv[1:])
    exit_without_final_collection()
    main()
