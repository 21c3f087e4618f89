"""Comparing training runs by their validation histories: mIoU at equal iterations and at equal
training time, as JSON, a markdown table and a plot (``tools/compare.py`` writes them).

A run is a dict ``{"name", "overrides", "history": [{"iteration", "mIoU", "train_seconds"}, ...],
"parameters", "total_seconds"}``; ``history`` is the trainer's (``metrics.json``), where
``train_seconds`` counts training steps and data loading, not validation or saving.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Sequence

import torch


def machine_info() -> dict:
    """What the timings depend on: CPU model and the kernels torch picked, threads, GPU."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def at_iteration(history: Sequence[dict], iteration: int) -> dict | None:
    """The validation entry at exactly ``iteration``, or None."""
    return next((h for h in history if h["iteration"] == iteration), None)


def at_time(history: Sequence[dict], seconds: float) -> dict | None:
    """The last validation entry reached within ``seconds`` of training, or None (what the run had
    to show at that time; no interpolation)."""
    reached = [h for h in history if h["train_seconds"] <= seconds + 1e-9]
    return reached[-1] if reached else None


def summarize(runs: Sequence[dict]) -> dict:
    """mIoU of every run at the last iteration all runs validated at, and at the shortest run's
    total training time."""
    if not runs or any(not r["history"] for r in runs):
        raise ValueError("every run needs at least one validation entry to be compared")
    common = set.intersection(*({h["iteration"] for h in r["history"]} for r in runs))
    iteration = max(common) if common else None
    seconds = min(r["history"][-1]["train_seconds"] for r in runs)
    equal_iterations, equal_time = [], []
    for r in runs:
        entry = at_iteration(r["history"], iteration) if iteration is not None else None
        equal_iterations.append({
            "name": r["name"], "mIoU": entry["mIoU"] if entry else None,
            "train_seconds": entry["train_seconds"] if entry else None,
        })
        entry = at_time(r["history"], seconds)
        equal_time.append({
            "name": r["name"], "mIoU": entry["mIoU"] if entry else None,
            "iteration": entry["iteration"] if entry else None,
        })
    return {
        "equal_iterations": {"iteration": iteration, "rows": equal_iterations},
        "equal_time": {"train_seconds": seconds, "rows": equal_time},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(runs: Sequence[dict], summary: dict, machine: dict) -> str:
    """One row per run: its overrides, parameters, mIoU at equal iterations (with the time it took)
    and at equal training time (with the iteration it had reached), best and final mIoU."""
    it = summary["equal_iterations"]["iteration"]
    sec = summary["equal_time"]["train_seconds"]
    lines = [
        f"| run | overrides | params | mIoU @ it {it} | train s to it {it} | mIoU @ {sec:.0f} s | it @ {sec:.0f} s "
        "| best mIoU | s/it |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, eq_it, eq_t in zip(runs, summary["equal_iterations"]["rows"], summary["equal_time"]["rows"]):
        last = run["history"][-1]
        best = max(h["mIoU"] for h in run["history"])
        per_it = last["train_seconds"] / max(last["iteration"], 1)
        secs = "-" if eq_it["train_seconds"] is None else f"{eq_it['train_seconds']:.0f}"
        lines.append(
            f"| {run['name']} | `{' '.join(run['overrides'])}` | {run['parameters'] / 1e6:.1f}M | {_pct(eq_it['mIoU'])} "
            f"| {secs} | {_pct(eq_t['mIoU'])} | {eq_t['iteration'] or '-'} | {_pct(best)} | {per_it:.2f} |"
        )
    env = ", ".join(f"{k}={machine[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if machine.get(k))
    lines += [
        "",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, CPU capability {machine['cpu_capability']}"
        f"{', ' + env if env else ''}{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}). "
        "Training seconds exclude validation and checkpointing.",
    ]
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """PNG: val mIoU against training time (left) and against iterations (right), one curve per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_iter) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        hist = run["history"]
        miou = [100 * h["mIoU"] for h in hist]
        by_time.plot([h["train_seconds"] for h in hist], miou, marker="o", ms=3, label=run["name"])
        by_iter.plot([h["iteration"] for h in hist], miou, marker="o", ms=3, label=run["name"])
    by_time.set_xlabel("training time (s, without validation)")
    by_iter.set_xlabel("iteration")
    for ax in (by_time, by_iter):
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
    by_iter.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs: Sequence[dict], out_dir: str | os.PathLike, machine: dict | None = None,
                 title: str = "") -> dict:
    """Write ``comparison.json``, ``comparison.md`` and ``comparison.png`` to ``out_dir``; return
    the JSON content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine or machine_info()
    summary = summarize(runs)
    report = {"machine": machine, "runs": list(runs), **summary}
    (out / "comparison.json").write_text(json.dumps(report, indent=2))
    (out / "comparison.md").write_text(markdown_table(runs, summary, machine))
    plot(runs, out / "comparison.png", title)
    return report
