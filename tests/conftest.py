"""Suite-wide settings and shared fixtures."""
import os

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
