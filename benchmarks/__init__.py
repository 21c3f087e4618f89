"""The benchmark harness behind ``tools/benchmark.py``: segdense's DenseNets against torchvision's (plain and
checkpointed) and torchvision's segmentation models, on the same input, side by side. It lives beside the package,
not in it (as timm keeps benchmark.py at its root); setup.cfg installs it as the top-level ``benchmarks`` package
so the tool imports it without editing sys.path.

The names below are imported on first use, so that ``python -m benchmarks.run_as_avx2`` starts without torch."""
from importlib import import_module

_HOMES = {"PRESETS": "config", "Row": "config", "Settings": "config", "family": "config",
          "growth_series": "config", "peer_rows": "config", "preset": "config",
          "summarise": "report", "table": "report", "to_json": "report", "Result": "runner", "run": "runner"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
