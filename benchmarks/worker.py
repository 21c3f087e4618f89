"""``python -m benchmarks.worker '<row json>'``: one row's CPU peak training memory, in a
fresh process; prints ``{"peak_bytes": N}``."""
import json
import sys

from .config import Row
from .measure import cpu_peak_bytes_here

if __name__ == "__main__":
    print(json.dumps({"peak_bytes": cpu_peak_bytes_here(Row.from_json(sys.argv[1]))}))
