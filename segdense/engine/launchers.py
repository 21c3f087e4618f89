"""Who started this process: torchrun, SLURM's ``srun`` (one task per process, no torchrun), or nobody.

torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) win: under ``srun torchrun`` the workers see both.
Without them, ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` give the rank, world size and local rank, as in
mmengine, timm and Lightning; rank 0 listens on the first host of ``SLURM_NODELIST`` (unless ``MASTER_ADDR`` is
set) at ``MASTER_PORT``, else at 15000 + the job id's last four digits (Lightning's convention).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from segdense.errors import ConfigError

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS")
DEFAULT_PORT = 29500  # torch's own default, when SLURM gives no job id either


@dataclasses.dataclass(frozen=True)
class Launch:
    """This process's place in the job. ``master_addr``/``master_port``: where rank 0 listens, for SLURM (torchrun
    passes them in the environment itself)."""

    launcher: str  # "torchrun", "slurm" or "single process"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    def describe(self) -> str:
        if self.launcher == "single process":
            return "launcher: single process"
        where = f", rendezvous at {self.master_addr}:{self.master_port}" if self.master_addr else ""
        return f"launcher: {self.launcher}, {self.world_size} process(es){where}"


def detect_launch(env: Mapping[str, str]) -> Launch:
    """The launch ``env`` (usually ``os.environ``) describes; a malformed variable raises :class:`ConfigError`
    naming it."""
    if any(name in env for name in TORCHRUN_VARIABLES):
        world = _integer(env, "WORLD_SIZE", "1")
        if world <= 1:
            return Launch("torchrun")
        return Launch("torchrun", _integer(env, "RANK"), _integer(env, "LOCAL_RANK", "0"), world)
    if all(name in env for name in SLURM_VARIABLES):
        return _slurm_launch(env)
    return Launch("single process")


def _slurm_launch(env: Mapping[str, str]) -> Launch:
    world = _integer(env, "SLURM_NTASKS")
    if world <= 1:
        return Launch("slurm")
    nodelist_name = "SLURM_NODELIST" if "SLURM_NODELIST" in env else "SLURM_JOB_NODELIST"
    if "MASTER_ADDR" in env:
        address = env["MASTER_ADDR"]
    elif nodelist_name in env:
        try:
            address = expand_hostlist(env[nodelist_name])[0]
        except ConfigError as e:
            raise ConfigError(f"{nodelist_name}: {e}") from e
    else:
        raise ConfigError(f"SLURM started {world} tasks but set neither SLURM_NODELIST nor SLURM_JOB_NODELIST; "
                          "set MASTER_ADDR to the host of task 0")
    return Launch("slurm", _integer(env, "SLURM_PROCID"), _integer(env, "SLURM_LOCALID", "0"), world,
                  address, master_port(env))


def master_port(env: Mapping[str, str]) -> int:
    """``MASTER_PORT``; else 15000 + the last four digits of ``SLURM_JOB_ID`` (every task of a job agrees on
    it, and two jobs on one node rarely collide); else 29500."""
    if "MASTER_PORT" in env:
        return _integer(env, "MASTER_PORT")
    if "SLURM_JOB_ID" in env:
        return 15000 + _integer(env, "SLURM_JOB_ID") % 10000
    return DEFAULT_PORT


def _integer(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    value = env.get(name, default)
    if value is None:
        raise ConfigError(f"{name} is not set; it is needed together with the other launcher variables")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compact host list as host names, in order: ``node[01-03,07]`` -> node01, node02, node03, node07
    (zero padding kept); ``gpu-a[1,3-4],gpu-b7``; several bracket groups (``r[1-2]n[1-2]``: r1n1, r1n2, r2n1,
    r2n2); plain names. What ``scontrol show hostnames`` prints, without needing scontrol."""
    hosts = [host for name in _top_level_names(hostlist) for host in _expand_name(name)]
    if not hosts:
        raise ConfigError(f"host list {hostlist!r} names no host; expected names like node[01-03,07],gpu-b7")
    return hosts


def _top_level_names(hostlist: str) -> list[str]:
    """``hostlist`` split at the commas outside brackets."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            break
        if char == "," and depth == 0:
            names.append(hostlist[start:i].strip())
            start = i + 1
    if depth != 0 or any(not name for name in names):
        raise ConfigError(f"host list {hostlist!r} is malformed (unbalanced brackets or an empty name); "
                          "expected names like node[01-03,07],gpu-b7")
    return names


def _expand_name(name: str) -> list[str]:
    match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]*)\](.*)", name)
    if match is None:
        return [name]
    prefix, ranges, rest = match.groups()
    return [prefix + number + tail for number in _expand_ranges(ranges, name) for tail in _expand_name(rest)]


def _expand_ranges(ranges: str, name: str) -> list[str]:
    numbers = []
    for part in ranges.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or int(match.group(2) or match.group(1)) < int(match.group(1)):
            raise ConfigError(f"host list entry {name!r}: {part!r} is not a number or an increasing range; "
                              "expected brackets like [01-03,07]")
        first, last = match.group(1), match.group(2) or match.group(1)
        numbers += [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    return numbers
