"""A tracked run's life: open the asked-for loggers on rank 0 (continuing their runs when training resumes), log the
configuration, and at the end the artifacts and the run's status, whatever ended it."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from segdense.errors import ConfigError

from ..preemption import Preempted
from .base import LOGGERS, GuardedLogger, Logger

logger = logging.getLogger("segdense.train")

RUN_IDS = "tracking.json"  # in the run directory: each backend's run id, for resuming
ARTIFACTS = ("checkpoints/best.pt", "report.html", "config.yaml")


def check_loggers(names: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The problems of ``logger=[...]`` and the backends' option blocks: an unknown name (listing the valid ones),
    an option its constructor does not take."""
    problems = []
    for name in names:
        if name not in LOGGERS:
            problems.append(f"unknown logger {name!r}; valid loggers: {', '.join(LOGGERS.names())} "
                            "(e.g. logger=[tensorboard,mlflow])")
    for name, block in options.items():
        if name not in LOGGERS:
            continue
        accepted = set(LOGGERS.signature(name)[0]) - {"run_dir", "run_id"}
        problems += [f"{name}.{key} is not an option of logger {name}; valid keys: {', '.join(sorted(accepted))}"
                     for key in block if key not in accepted]
    return problems


def open_loggers(names: Sequence[str], run_dir: str | os.PathLike, options: Mapping[str, Mapping[str, Any]],
                 resume: bool = False, main_process: bool = True) -> list[Logger]:
    """The loggers ``names`` asks for, guarded (:class:`GuardedLogger`), each built with its ``options[name]``.
    Only the main process logs (elsewhere: an empty list, after the same checks). A backend whose package is
    missing is a :class:`ConfigError`; one that cannot start (a server that does not answer) is a warning and the
    run trains on without it. With ``resume`` each backend continues the run whose id ``tracking.json`` holds."""
    problems = check_loggers(names, {n: options.get(n, {}) for n in names})
    if problems:
        raise ConfigError("; ".join(problems))
    for name in names:
        LOGGERS.get(name).check_installed()
    if not main_process:
        return []
    run_dir = Path(run_dir)
    ids = read_run_ids(run_dir) if resume else {}
    opened = []
    for name in dict.fromkeys(names):
        try:
            backend = LOGGERS.get(name)(run_dir=run_dir, run_id=ids.get(name), **options.get(name, {}))
        except Exception as exc:  # a tracking server down must not stop training
            logger.warning("logger %s could not start (%s: %s); training goes on without it", name,
                           type(exc).__name__, exc)
            continue
        opened.append(GuardedLogger(backend))
    write_run_ids(run_dir, {**ids, **{lg.name: lg.run_id for lg in opened if lg.run_id}})
    return opened


def read_run_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / RUN_IDS
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run_ids(run_dir: Path, ids: dict[str, str]) -> None:
    if not ids:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_IDS}.tmp"
    tmp.write_text(json.dumps(ids, indent=2))
    os.replace(tmp, run_dir / RUN_IDS)


@contextlib.contextmanager
def tracked_run(loggers: Sequence[Logger], run_dir: str | os.PathLike) -> Iterator[None]:
    """Around a run: at its end, whatever ended it, each logger gets the run's artifacts that exist (best
    checkpoint, ``report.html``, ``config.yaml``) and is closed with the status: ``finished``; ``killed`` by a
    stop signal (:class:`Preempted`) or Ctrl-C; ``failed`` by any other exception, which goes on up."""
    status = "failed"
    try:
        yield
        status = "finished"
    except (Preempted, KeyboardInterrupt):
        status = "killed"
        raise
    finally:
        for lg in loggers:
            for name in ARTIFACTS:
                if (Path(run_dir) / name).is_file():
                    lg.log_artifact(Path(run_dir) / name)
            lg.close(status)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay whole values (a crop size, a list of loss terms)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def git_commit(directory: str | os.PathLike) -> str | None:
    """The commit checked out at ``directory`` (with ``-dirty`` when files changed), or None outside a git
    checkout or without git."""
    try:
        run = [["git", "-C", str(directory), "rev-parse", "HEAD"],
               ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"]]
        head, changes = (subprocess.run(c, capture_output=True, text=True, timeout=10) for c in run)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")
