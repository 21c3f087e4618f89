"""The typed schema of ``conf/config.yaml``. Registered in Hydra's ConfigStore as ``train_schema``
and listed first in the defaults, so a wrong type or an unknown top-level key fails at compose
time. Group blocks are open dicts here: :mod:`segdense.config.group_keys` checks their keys against
the constructors they feed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrainConfig:
    backbone: Dict[str, Any] = field(default_factory=dict)
    head: Dict[str, Any] = field(default_factory=dict)
    dataset: Dict[str, Any] = field(default_factory=dict)
    augmentation: Dict[str, Any] = field(default_factory=dict)
    task: Dict[str, Any] = field(default_factory=dict)
    loss: Dict[str, Any] = field(default_factory=dict)
    optimizer: Dict[str, Any] = field(default_factory=dict)
    scheduler: Dict[str, Any] = field(default_factory=dict)
    output_stride: int = 16
    iterations: int = 20000
    batch_size: int = 16
    accumulate: int = 1
    crop_size: List[int] = field(default_factory=lambda: [512, 512])
    lr: float = 0.01
    aux_loss: bool = False
    device: str = "auto"
    amp: str = "auto"
    channels_last: Any = "auto"
    compile: bool = False
    grad_clip: Optional[float] = None
    seed: int = 0
    deterministic: bool = False
    resume: Optional[str] = None
    init_from: Optional[str] = None
    val_interval: int = 2000
    checkpoint_interval: int = 1000
    log_interval: int = 50
    num_workers: Any = "auto"
    val_batch_size: int = 4
    validate_data: str = "quick"
    logger: List[str] = field(default_factory=lambda: ["tensorboard"])
    mlflow: Dict[str, Any] = field(default_factory=dict)
    wandb: Dict[str, Any] = field(default_factory=dict)
    early_stop: Dict[str, Any] = field(default_factory=dict)
    ema: Dict[str, Any] = field(default_factory=dict)
    report: bool = True


def register_schema() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
