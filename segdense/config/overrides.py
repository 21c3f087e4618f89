"""Command-line overrides checked before Hydra composes them, so that an unknown key gets the same one-line
``error:`` (the valid keys, the closest match, exit status 2) from every tool instead of Hydra's
``Key 'output' is not in struct``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf

from segdense.errors import ConfigError, closest_match

from .cli import run_tool
from .schema import TrainConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def unknown_key_message(key: str, known: Iterable[str], source: str) -> str:
    """``unknown key 'x' (did you mean 'y'?); valid keys: ...`` for a key not in ``known``."""
    known = sorted(known)
    close = closest_match(key, known)
    hint = f" (did you mean {close!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(known)} (see {source})"


def config_keys(config_name: str, conf_dir: Path = CONF_DIR) -> tuple[set[str], set[str]]:
    """(top-level keys, config groups) of ``conf_dir/<config_name>.yaml``; for the training config the typed
    schema's fields too."""
    raw = OmegaConf.to_container(OmegaConf.load(conf_dir / f"{config_name}.yaml"))
    groups = set()
    for entry in raw.pop("defaults", []) or []:
        if isinstance(entry, dict):
            groups |= {k for k in entry if not k.startswith("override ")}
    keys = set(raw) - {"hydra"}
    if config_name == "config":
        keys |= {f.name for f in dataclasses.fields(TrainConfig)}
    return keys - groups, groups


def check_overrides(config_name: str, argv: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise :class:`ConfigError` naming every override in ``argv`` whose top-level key the config does not have
    (flags and ``hydra.`` overrides are Hydra's; a malformed override is left for Hydra to report)."""
    args = [a for a in argv if "=" in a and not a.startswith("-")] + [a for a in argv if a.startswith("~")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except OverrideParseException:
        return
    keys, groups = config_keys(config_name, conf_dir)
    source = f"conf/{config_name}.yaml"
    errors = []
    for override in overrides:
        top = override.key_or_group.split("/")[0].split(".")[0]
        if top != "hydra" and top not in keys and top not in groups:
            errors.append(unknown_key_message(top, keys | groups, source))
    if errors:
        raise ConfigError("invalid command line:\n  - " + "\n  - ".join(dict.fromkeys(errors)))


def command_line_keys() -> set[str]:
    """The keys and groups the running Hydra application was given on its command line (``output_stride=8``:
    ``output_stride``); empty when no Hydra application is running (a configuration composed in code)."""
    if not HydraConfig.initialized():
        return set()
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return {override.key_or_group for override in overrides}


def exit_on_unknown_keys(config_name: str, argv: Sequence[str]) -> None:
    """:func:`check_overrides` behind the tools' error boundary (:func:`segdense.config.cli.run_tool`): one
    ``error:`` line and exit status 2 when a key is unknown."""
    run_tool(lambda args: check_overrides(config_name, args), list(argv))
