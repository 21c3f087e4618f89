"""segdense: semantic segmentation on DenseNet backbones."""
from .models import build_model  # (needs only torch)
from .version import __version__

__all__ = ["Predictor", "__version__", "build_model", "load_model"]


def __getattr__(name: str):
    # Inference entry points, imported on first use (they need only torch until an image is read).
    if name in ("Predictor", "load_model"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'segdense' has no attribute {name!r}")
