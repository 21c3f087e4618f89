"""Using a trained model: rebuilding it from a checkpoint, predicting on images (whole, slide, multi-scale/flip
TTA), writing predictions, and evaluating on a dataset. Pillow and albumentations are imported only when used."""
from .loading import CheckpointError, ModelBundle, load_bundle, load_model
from .predictor import Predictor
from .tta import MultiScaleFlip, SlideInference, build_infer, whole_logits

__all__ = [
    "CheckpointError", "ModelBundle", "MultiScaleFlip", "Predictor", "SlideInference", "build_infer",
    "load_bundle", "load_model", "whole_logits",
]
