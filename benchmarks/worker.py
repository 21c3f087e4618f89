"""``python -m benchmarks.worker '<row json>' [train | infer [MODEL.onnx]]``: one row's CPU peak memory in a
fresh process, of a training step (default) or of an inference (eager, or of the ONNX file); prints
``{"peak_bytes": N}``."""
import json
import sys

from .config import Row
from .measure import cpu_infer_peak_bytes_here, cpu_peak_bytes_here

if __name__ == "__main__":
    row, kind, *path = Row.from_json(sys.argv[1]), *(sys.argv[2:] or ["train"])
    peak = cpu_peak_bytes_here(row) if kind == "train" else cpu_infer_peak_bytes_here(row, *path)
    print(json.dumps({"peak_bytes": peak}))
