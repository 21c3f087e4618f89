"""Peak memory of streamed scene prediction at growing scene sides: ``python -m benchmarks.scene_memory --sides
10000 20000 30000 --folder /tmp/scenes``. Each side gets a tiled, compressed uint8 RGB TIFF (written tile by tile)
and a fresh process that predicts it with a small model (512 windows, Gaussian blend) and reports its peak
resident memory (Linux VmHWM) and time."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn as nn

TILE = 512


def write_scene(path: Path, side: int) -> None:
    """A smooth, compressible RGB pattern, written one tile at a time."""
    def tiles():
        yy, xx = np.mgrid[0:TILE, 0:TILE]
        for y in range(0, side, TILE):
            for x in range(0, side, TILE):
                value = ((yy + y) // 7 + (xx + x) // 5) % 256
                yield np.stack([value, (value * 3) % 256, (value + (x // TILE)) % 256], -1).astype(np.uint8)

    tifffile.imwrite(path, data=tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
                     compression="zlib", photometric="rgb", bigtiff=True)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1),
                          nn.Upsample(scale_factor=4, mode="bilinear"))
    model.model_config = {"num_classes": 2}
    return model


def predict(scene: str, output: str) -> dict:
    from segdense.allocator import tune_malloc
    from segdense.inference import Predictor
    from segdense.inference.scene_run import predict_scene

    tune_malloc()
    predictor = Predictor.from_model(small_model(), device="cpu", batch_size=4)
    start = time.perf_counter()
    predict_scene(predictor, scene, output, (512, 512), None, "gaussian", "benchmark", overwrite=True)
    seconds = time.perf_counter() - start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024, "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sides", type=int, nargs="+", default=[10000, 20000, 30000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/segdense_scenes"))
    parser.add_argument("--predict", nargs=2, help=argparse.SUPPRESS)  # the child process: SCENE OUTPUT
    args = parser.parse_args(argv)
    if args.predict:
        print(json.dumps(predict(*args.predict)))
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in args.sides:
        scene = args.folder / f"scene_{side}.tif"
        if not scene.exists():
            write_scene(scene, side)
        result = subprocess.run([sys.executable, "-m", "benchmarks.scene_memory", "--predict", str(scene),
                                 str(args.folder / f"labels_{side}.tif")], capture_output=True, text=True, check=True)
        row = {"side": side, **json.loads(result.stdout.strip().splitlines()[-1]),
               "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
        row["megapixels_per_s"] = side * side / 1e6 / row["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
