"""The error boundary of every command-line tool."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from omegaconf import DictConfig

logger = logging.getLogger("segdense")


def run_tool(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``job(cfg)``. A user's mistake (an invalid config, a missing or corrupt checkpoint or data
    file, an unwritable output, a loss gone NaN) prints one ``error:`` line and exits with status 2
    instead of a traceback; ``SEGDENSE_DEBUG=1`` shows the traceback instead."""
    from segdense.data import DatasetFileError
    from segdense.engine.distributed import cleanup_distributed
    from segdense.export import ExportError

    try:
        return job(cfg)
    except (ValueError, FileNotFoundError, PermissionError, FloatingPointError, DatasetFileError, ExportError) as e:
        if os.environ.get("SEGDENSE_DEBUG") == "1":
            raise
        logger.debug("error details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        cleanup_distributed()
