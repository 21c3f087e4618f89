"""Streamed scene prediction beside MONAI's ``sliding_window_inference`` (``tools/benchmark.py --preset scene``).

Both predict a uint8 RGB scene TIFF (:func:`benchmarks.scene_memory.write_scene`) with the same small 2-class model,
the same windows (``window`` square, every ``stride`` pixels; MONAI's ``overlap`` is chosen so that its scan interval
is that stride) and the same Gaussian blend (sigma one eighth of the window: MONAI's ``mode="gaussian",
sigma_scale=0.125``), and write the labels into a tiled, zlib-compressed TIFF. segdense streams the scene through
:func:`segdense.inference.scene_run.predict_scene`; MONAI, as its users run it, holds the whole normalised input and
its full output buffer (logits and weight sums) in memory. Each case runs in a fresh process, so its peak resident
memory (Linux VmHWM) is its own; the time covers reading the file to writing the labels.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tifffile
import torch

from segdense.tasks import class_argmax

from .scene_memory import small_model, write_scene

IMPLS = ("segdense", "monai")
WINDOW, BATCH = 512, 4
STRIDE = WINDOW * 2 // 3  # segdense's default stride: two thirds of the window
SCENE_SIDE, MONAI_SIDE = 20000, 10000
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # Predictor.from_model's normalisation


@dataclass(frozen=True)
class SceneCase:
    """One measurement: ``impl`` predicting a ``side`` x ``side`` scene."""

    impl: str
    side: int
    window: int = WINDOW
    stride: int = STRIDE
    batch: int = BATCH

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"scene impl must be one of {IMPLS}, got {self.impl!r}")
        if not 1 <= self.stride <= self.window <= self.side or self.batch < 1:
            raise ValueError(f"a scene case needs 1 <= stride <= window <= side and batch >= 1, got stride "
                             f"{self.stride}, window {self.window}, side {self.side}, batch {self.batch}")

    def label(self) -> str:
        return f"{self.impl} {self.side}^2"


def scene_cases(scene_side: int = SCENE_SIDE, monai_sides: Sequence[int] = (MONAI_SIDE,), **kw) -> list[SceneCase]:
    """At each of ``monai_sides`` MONAI and segdense on the same scene (the like-for-like pairs), then segdense alone
    at ``scene_side`` (a scene MONAI cannot hold)."""
    cases = []
    for side in sorted(set(monai_sides)):
        cases += [SceneCase("monai", side, **kw), SceneCase("segdense", side, **kw)]
    if scene_side not in monai_sides:
        cases.append(SceneCase("segdense", scene_side, **kw))
    return cases


def monai_overlap(window: int, stride: int) -> float:
    """The ``overlap`` for which MONAI's scan interval, ``int(window * (1 - overlap))``, is ``stride``: half a pixel
    above it, so that rounding cannot fall one short."""
    return max(0.0, (window - stride - 0.5) / window)


def _status_mb(field: str) -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) / 1024


def predict_segdense(case: SceneCase, scene: Path, output: Path) -> tuple[float, float]:
    """(resident MB once the model is ready, seconds to stream ``scene`` into ``output``)."""
    from segdense.inference import Predictor
    from segdense.inference.scene_run import predict_scene

    predictor = Predictor.from_model(small_model(), device="cpu", batch_size=case.batch)
    ready, start = _status_mb("VmRSS"), time.perf_counter()
    predict_scene(predictor, scene, output, (case.window,) * 2, (case.stride,) * 2, "gaussian", "benchmark",
                  overwrite=True)
    return ready, time.perf_counter() - start


def predict_monai(case: SceneCase, scene: Path, output: Path) -> tuple[float, float]:
    """(resident MB once the model is ready, seconds to read ``scene`` whole, normalise it in place, run
    ``sliding_window_inference``, take the labels a few rows at a time (no int64 copy of the scene) with segdense's
    argmax (the same labels step on both sides: torch.argmax over the class dimension of (C, H, W) logits takes
    several times as long, see :func:`segdense.tasks.class_argmax`) and write them as segdense does (tiled 256^2,
    zlib; tifffile's default threads, which measured faster for MONAI than one compressing thread per torch
    thread))."""
    from monai.inferers import sliding_window_inference

    model = small_model().eval()
    ready, start = _status_mb("VmRSS"), time.perf_counter()
    image = tifffile.imread(scene)
    inputs = torch.empty((1, 3, *image.shape[:2]))
    inputs[0].copy_(torch.from_numpy(image).permute(2, 0, 1))
    del image
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    inputs[0].div_(255).sub_(mean).div_(std)
    with torch.inference_mode():
        logits = sliding_window_inference(inputs, (case.window,) * 2, case.batch, model,
                                          overlap=monai_overlap(case.window, case.stride), mode="gaussian",
                                          sigma_scale=0.125)
        del inputs
        labels = np.empty(logits.shape[2:], np.uint8)
        for y in range(0, labels.shape[0], 1024):
            labels[y:y + 1024] = class_argmax(logits[0, :, y:y + 1024], 0).numpy()
    del logits
    tifffile.imwrite(output, labels, tile=(256, 256), compression="zlib", bigtiff=True)
    return ready, time.perf_counter() - start


def measure_here(case: SceneCase, scene: Path, output: Path) -> dict:
    """This process's time, peak resident memory and resident memory once imports and model were ready (the
    imports differ: MONAI's pulls in the optional packages it finds installed) for ``case`` (run in a fresh
    process: :func:`measure`)."""
    from segdense.allocator import tune_malloc

    tune_malloc()  # as tools/infer.py does, for both implementations
    ready, seconds = (predict_segdense if case.impl == "segdense" else predict_monai)(case, scene, output)
    return {"seconds": seconds, "peak_rss_mb": _status_mb("VmHWM"), "ready_rss_mb": ready}


def measure(case: SceneCase, folder: Path, timeout: float = 3600.0) -> dict:
    """``case`` measured in a fresh process on ``folder``'s scene of its side (written first if missing)."""
    scene = folder / f"scene_{case.side}.tif"
    if not scene.exists():
        write_scene(scene, case.side)
    output = folder / f"labels_{case.impl}_{case.side}.tif"
    load = os.getloadavg()[0]  # other jobs on the machine: the 1-minute load average before and after
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scene", json.dumps(asdict(case)), str(scene),
                           str(output)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"error": tail[0]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load": [load, os.getloadavg()[0]]}


def run_scene(cases: Sequence[SceneCase], folder: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Each case measured in turn, in its own process; a failed case keeps its error and the others still run."""
    if any(case.impl == "monai" for case in cases) and importlib.util.find_spec("monai") is None:
        raise RuntimeError("the scene benchmark's peer is MONAI's sliding_window_inference, and monai is not "
                           "installed: pip install -e '.[bench]'")
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for case in cases:
        log(f"{case.label()}: measuring")
        results.append({"case": asdict(case), "label": case.label(), "error": None, **measure(case, folder)})
    return results


def summarise_scene(results: Sequence[dict]) -> list[dict]:
    """Megapixels per second and memory growth while predicting (peak over ready) of each case and, for segdense,
    its speed, peak memory and growth against MONAI's: on the same side where MONAI ran there, else memory against
    MONAI's largest measured side (``vs_side``)."""
    out = [{**r, "megapixels_per_s": None if r["error"] else r["case"]["side"] ** 2 / 1e6 / r["seconds"],
            "growth_mb": None if r["error"] else r["peak_rss_mb"] - r["ready_rss_mb"],
            "vs_side": None, "speed_vs_monai": None, "memory_vs_monai": None, "growth_vs_monai": None} for r in results]
    monai = {d["case"]["side"]: d for d in out if d["case"]["impl"] == "monai" and not d["error"]}
    for d in out:
        if d["case"]["impl"] != "segdense" or d["error"] or not monai:
            continue
        side = d["case"]["side"]
        peer = monai.get(side) or monai[max(monai)]
        d["vs_side"], d["memory_vs_monai"] = peer["case"]["side"], d["peak_rss_mb"] / peer["peak_rss_mb"]
        d["growth_vs_monai"] = d["growth_mb"] / peer["growth_mb"]
        if peer["case"]["side"] == side:  # throughput compares on the same scene only
            d["speed_vs_monai"] = d["megapixels_per_s"] / peer["megapixels_per_s"]
    return out


def scene_table(summary: Sequence[dict], markdown: bool = False) -> str:
    """The cases as a table: side, time, megapixels per second, peak RSS and the ratios to MONAI."""
    head = ["row", "side", "s", "Mpx/s", "peak RSS MB", "ready MB", "growth MB", "vs MONAI at", "speed/MONAI",
            "peak/MONAI", "growth/MONAI", "load"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = []
    for d in summary:
        if d["error"]:
            lines.append([d["label"], str(d["case"]["side"]), f"failed: {d['error']}"] + [""] * 9)
            continue
        lines.append([d["label"], f"{d['case']['side']:,}", fmt(d["seconds"], ".0f"), fmt(d["megapixels_per_s"], ".2f"),
                      fmt(d["peak_rss_mb"], ",.0f"), fmt(d["ready_rss_mb"], ",.0f"), fmt(d["growth_mb"], ",.0f"),
                      fmt(d["vs_side"], ","), fmt(d["speed_vs_monai"], ".2f"), fmt(d["memory_vs_monai"], ".2f"),
                      fmt(d["growth_vs_monai"], ".2f"),
                      "-" if "load" not in d else "{:.1f}-{:.1f}".format(*d["load"])])
    if markdown:
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head)] + lines)
    widths = [max(len(str(c[i])) for c in [head] + lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) for cells in [head] + lines)


if __name__ == "__main__":  # the child process of measure(): CASE_JSON SCENE OUTPUT
    print(json.dumps(measure_here(SceneCase(**json.loads(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]))))
