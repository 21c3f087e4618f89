"""Suite-wide settings and shared fixtures."""
import torch
from infer_fixtures import tiny_checkpoint  # noqa: F401  (a fixture: a small trained checkpoint)


def pytest_configure(config):
    # One intra-op thread: the suite is many small convolutions, and when another process shares
    # the two cores (a subprocess test, a parallel job) torch's thread pool spins against itself
    # and small convolutions get ten times slower.
    torch.set_num_threads(1)
