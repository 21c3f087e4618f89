"""Predict on images: ``python tools/infer.py checkpoint=PATH input=FILE|DIR|GLOB output=DIR [key=value ...]``.

``checkpoint`` is a ``.pt`` checkpoint, a ``.safetensors`` file or an ``.onnx`` export (run with ONNX Runtime).
Exit status 1 when some image could not be read or written (the others are still done). See conf/infer.yaml.
"""
import sys

import hydra
from omegaconf import DictConfig

from segdense.config.cli import exit_without_final_collection, run_tool
from segdense.config.infer_job import infer_job
from segdense.config.overrides import exit_on_unknown_keys


@hydra.main(version_base="1.3", config_path="../conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    report = run_tool(infer_job, cfg)
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    exit_on_unknown_keys("infer", sys.argv[1:])
    exit_without_final_collection()
    main()
