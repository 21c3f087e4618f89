"""``compare(...)``: train several configurations through the real trainer and compare their
validation curves (tools/compare.py calls it)."""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from segdense.engine.comparison import machine_info, write_report
from segdense.errors import ConfigError

from .schema import register_schema
from .train_job import train

logger = logging.getLogger("segdense.compare")


def parse_run(spec: str) -> tuple[str, list[str]]:
    """``"name: key=value group=option ..."`` -> (name, overrides). Without ``name:`` the
    overrides joined by spaces name the run."""
    name, sep, rest = spec.partition(":")
    if sep and "=" not in name:
        name, overrides = name.strip(), rest.split()
    else:
        overrides = spec.split()
        name = " ".join(overrides) or "default"
    if not name or not re.fullmatch(r"[\w.,=+\-\[\] ]+", name):
        raise ConfigError(f"run name {name!r}: use letters, digits and . , = + - [ ] only ({spec!r})")
    return name, overrides


def compose_run(config_dir: str | os.PathLike, overrides: Sequence[str]):
    """The training configuration of ``conf/config.yaml`` with ``overrides``, as tools/train.py
    would compose it."""
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compare(config_dir: str | os.PathLike, runs: Sequence[str], out_dir: str | os.PathLike,
            common: Sequence[str] = ()) -> dict:
    """Train every run (``"name: overrides"``, each after the ``common`` overrides) in turn into
    ``out_dir/runs/<name>``, then write the comparison report to ``out_dir``. A run whose
    directory already holds a finished run of the same overrides is read, not retrained (the tool
    can be re-run with more configurations); one of other overrides is an error."""
    parsed = [parse_run(spec) for spec in runs]
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"run names must be unique, got {names}")
    if not parsed:
        raise ConfigError("give at least one run to compare")
    out = Path(out_dir)
    results = []
    for name, overrides in parsed:
        cfg = compose_run(config_dir, [*common, *overrides])
        run_dir = out / "runs" / name.replace(" ", "_")
        done = run_dir / "comparison_run.json"
        if done.is_file():
            finished = json.loads(done.read_text())
            if finished["overrides"] != [*common, *overrides]:
                raise ConfigError(
                    f"run {name!r}: {run_dir} holds a finished run with other overrides "
                    f"({' '.join(finished['overrides'])}); give this configuration another name or --out"
                )
            logger.info("run %s: reading its finished result from %s", name, done)
            results.append(finished)
            continue
        start = time.perf_counter()
        seen = {}
        train(cfg, run_dir=run_dir, hooks=[lambda trainer, it: seen.setdefault("trainer", trainer)])
        trainer = seen["trainer"]
        result = {
            "name": name,
            "overrides": [*common, *overrides],
            "history": trainer.history,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "total_seconds": round(time.perf_counter() - start, 1),
            "iterations": trainer.iteration,
        }
        done.write_text(json.dumps(result, indent=2))
        results.append(result)
    title = " ".join(common)
    return write_report(results, out, machine_info(), title=title)
