"""The benchmark harness behind ``tools/benchmark.py``: segdense's DenseNets against torchvision's (plain and
checkpointed) and torchvision's segmentation models, on the same input, side by side. It lives beside the package,
not in it (as timm keeps benchmark.py at its root); setup.cfg installs it as the top-level ``benchmarks`` package
so the tool imports it without editing sys.path."""
from .config import PRESETS, Row, Settings, family, growth_series, peer_rows, preset
from .report import summarise, table, to_json
from .runner import Result, run

__all__ = ["PRESETS", "Result", "Row", "Settings", "family", "growth_series", "peer_rows", "preset", "run",
           "summarise", "table", "to_json"]
