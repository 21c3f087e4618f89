"""Suite-wide settings and shared fixtures."""
import logging
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels (segdense.backbones.fused_kernels) run on CPU tensors in Triton's interpreter:
    # slowly, exactly. Read when a kernel is defined, so it is set before anything imports them.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from infer_fixtures import tiny_checkpoint  # noqa: F401  (a fixture: a small trained checkpoint)


def pytest_configure(config):
    # One intra-op thread: the suite is many small convolutions, and when another process shares
    # the two cores (a subprocess test, a parallel job) torch's thread pool spins against itself
    # and small convolutions get ten times slower.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """Undo what a tool run in this process did to logging: Hydra's job logging gives the root logger handlers on
    the streams pytest captured for that test, which are closed afterwards; a later test's log line would then
    print "--- Logging error ---" into the stderr it checks."""
    loggers = [logging.getLogger()] + [l for l in logging.Logger.manager.loggerDict.values()
                                       if isinstance(l, logging.Logger)]
    saved = [(l, l.handlers[:], l.level, l.disabled, l.propagate) for l in loggers]
    yield
    for logger, handlers, level, disabled, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.disabled, logger.propagate = disabled, propagate
