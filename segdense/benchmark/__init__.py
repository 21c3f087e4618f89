"""Benchmark library behind ``tools/benchmark.py``: segdense's DenseNets against torchvision's
(plain and checkpointed) on the same input, side by side. Needs only torch/torchvision (and
segdense.build_model, lazily, for head rows)."""
from .config import PRESETS, Row, Settings, growth_series, preset
from .report import summarise, table, to_json
from .runner import Result, run

__all__ = ["PRESETS", "Result", "Row", "Settings", "growth_series", "preset", "run", "summarise",
           "table", "to_json"]
