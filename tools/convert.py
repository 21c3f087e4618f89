"""Convert a published checkpoint: ``python tools/convert.py input=FILE output=OUT.pt [backbone=NAME]``.

The RDNet authors' mmseg ADE20K checkpoints and the DenseASPP authors' Cityscapes DenseASPP-161 become segdense
checkpoints (tools/eval.py, infer.py, export.py,
segdense.load_model); RDNet ImageNet files and torchvision DenseNets become backbone weights for
``backbone.pretrained=``. See conf/convert.yaml and docs/convert.md.
"""
import sys

import hydra
from omegaconf import DictConfig

from segdense.config.cli import run_tool
from segdense.config.convert_job import convert_job
from segdense.config.overrides import exit_on_unknown_keys


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    run_tool(convert_job, cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("convert", sys.argv[1:])
    main()
