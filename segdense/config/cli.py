"""The error boundary of every command-line tool."""
from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
from typing import Any, Callable

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from segdense.allocator import tune_malloc
from segdense.engine.distributed import cleanup_distributed, is_main_process
from segdense.engine.preemption import Preempted
from segdense.errors import UserError

logger = logging.getLogger("segdense")


def run_tool(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``job(cfg)``. A user's mistake — a :class:`segdense.errors.UserError` (an invalid config, a missing
    or corrupt checkpoint or data file, an unwritable output, a loss gone NaN) or a required key left unset
    (``???``) — prints one ``error:`` line and exits with status 2. Anything else is a bug of segdense and keeps
    its traceback; ``SEGDENSE_DEBUG=1`` shows the traceback of a user's mistake too. A run stopped by SIGTERM or
    SIGUSR1 logs where it saved its state and how to resume, and exits with 128 + the signal's number (143, 138).
    glibc's malloc is tuned first (:mod:`segdense.allocator`); what was done is logged at debug level, not shown
    by default."""
    logger.debug(tune_malloc())
    try:
        return job(cfg)
    except (UserError, MissingMandatoryValue) as e:
        if os.environ.get("SEGDENSE_DEBUG") == "1":
            raise
        logger.debug("error details", exc_info=True)
        message = f"{e.full_key} must be set: pass {e.full_key}=..." if isinstance(e, MissingMandatoryValue) else e
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except Preempted as e:
        if is_main_process():
            logger.warning("%s: stopped after iteration %d, state saved to %s; resume: rerun the same command with "
                           "resume=auto hydra.run.dir=%s (exit status %d)", e.signal_name, e.iteration,
                           e.checkpoint, e.checkpoint.parent.parent, e.exit_code)
        sys.exit(e.exit_code)
    finally:
        cleanup_distributed()


def exit_without_final_collection() -> None:
    """Let the interpreter's exit skip its full garbage collections over the objects that exist by then.

    Python ends with several collections over every object torch, Hydra and albumentations made at import (about
    300,000), which cost each process of ``tools/eval.py`` 0.65 s of a core after its work was done (2-core
    AVX512 VM); under torchrun every process pays it. ``gc.freeze`` at exit leaves those objects to the operating
    system; everything else is still freed by reference counting, and atexit handlers (logging's flush among
    them) still run. Called by the evaluation and prediction tools, which close or atomically rename every file
    they write before they return."""
    atexit.register(gc.freeze)
