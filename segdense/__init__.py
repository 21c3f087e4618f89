"""segdense: semantic segmentation on DenseNet backbones."""
__version__ = "0.1.0"

from .models import build_model  # noqa: E402  (needs only torch)

__all__ = ["__version__", "build_model"]
