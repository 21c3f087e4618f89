"""Export a checkpoint: ``python tools/export.py checkpoint=PATH format=onnx|torchscript|safetensors output=FILE``.

ONNX needs ``pip install -e ".[export]"``. The export is run back and compared with PyTorch. ``quantize=int8``
writes a static INT8 ONNX model after comparing its mIoU with float32's (``max_miou_drop``). See conf/export.yaml.
"""
import sys

import hydra
from omegaconf import DictConfig

from segdense.config.cli import run_tool
from segdense.config.export_job import export_job
from segdense.config.overrides import exit_on_unknown_keys


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_tool(export_job, cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("export", sys.argv[1:])
    main()
