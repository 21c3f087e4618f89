"""``convert_job(cfg)`` for tools/convert.py."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from segdense.errors import ConfigError
from segdense.importers import Imported, convert_checkpoint

from .overrides import CONF_DIR


def convert_job(cfg: DictConfig) -> Imported:
    """Convert ``cfg.input`` to ``cfg.output`` and print what was written, what was assumed, kept or dropped,
    and how to use the file."""
    if not isinstance(cfg.aux, bool) or not isinstance(cfg.overwrite, bool):
        raise ConfigError(f"aux={cfg.aux} and overwrite={cfg.overwrite}: expected true or false")
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True) if cfg.get("backbone") is not None else None
    imported = convert_checkpoint(cfg.input, cfg.output, backbone=backbone, aux=cfg.aux,
                                  output_stride=int(cfg.output_stride), overwrite=cfg.overwrite)
    print(f"read {cfg.input} ({imported.layout})")
    for note in imported.notes:
        print(f"  {note}")
    if imported.model_config is not None:
        config = imported.model_config
        print(f"wrote {cfg.output}: {config['backbone']['name']} + {config['head']['name']}, "
              f"{config['num_classes']} classes, aux head {'kept' if config['aux_loss'] else 'dropped'}")
        dataset = imported.dataset.get("name", "unknown")
        evaluate = (f"dataset={dataset if dataset != 'unknown' else 'NAME'} dataset.root=DIR"
                    f"{' mode=slide' if imported.config.get('crop_size') else ''}")
        print(f"  use it: python tools/eval.py checkpoint={cfg.output} {evaluate}; "
              f"python tools/infer.py checkpoint={cfg.output} input=IMAGES output=DIR")
    else:
        block = dict(imported.backbone)
        name = block.pop("name")
        options = "".join(f" backbone.{k}={_value(v)}" for k, v in block.items())
        print(f"wrote {cfg.output}: {name} backbone weights")
        print(f"  use them: python tools/train.py backbone={backbone_option(name)}{options} "
              f"backbone.pretrained={cfg.output}")
    return imported


def backbone_option(name: str) -> str:
    """The conf/backbone/ option that builds the registered backbone ``name`` (``custom`` for densenet_custom)."""
    for path in sorted((CONF_DIR / "backbone").glob("*.yaml")):
        if OmegaConf.load(path).get("name") == name:
            return path.stem
    return name


def _value(value) -> str:
    """A value as a Hydra override writes it: lists without spaces, null, true/false."""
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)
