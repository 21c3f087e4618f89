"""Train a segmentation model: ``python tools/train.py [group=option ...] [key=value ...]``.

Examples: ``python tools/train.py`` (embedded synthetic data), ``python tools/train.py backbone=densenet121
output_stride=16``, ``python tools/train.py dataset=voc dataset.root=/data/VOCdevkit aux_loss=true``,
``python tools/train.py -m backbone=densenet121,densenet169 output_stride=8,16``,
``torchrun --nproc_per_node=2 tools/train.py ...``, ``srun python tools/train.py ...`` (docs/distributed.md).
See conf/config.yaml for every key. SIGTERM or SIGUSR1 saves ``last.pt`` and exits with 143 or 138.
"""
import sys

import hydra
from omegaconf import DictConfig

from segdense.config.cli import run_tool
from segdense.config.overrides import exit_on_unknown_keys
from segdense.config.schema import register_schema
from segdense.config.train_job import train

register_schema()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    result = run_tool(train, cfg)
    return float(result.get("mIoU", float("nan"))) if result else float("nan")


if __name__ == "__main__":
    exit_on_unknown_keys("config", sys.argv[1:])
    main()
