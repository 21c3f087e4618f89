"""``Predictor``: a trained model as a function from images to labels, as its task makes them."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segdense.models.batchnorm_fusion import fold_conv_batchnorms
from segdense.runtime import autocast_context, resolve_amp, resolve_device

from .images import ImageReadError, load_image
from .loading import ModelBundle, default_palette, input_channels, load_bundle, min_input_size
from .onnx_model import OnnxModel
from .tta import build_infer, describe_infer


class Predictor:
    """Runs a segmentation model on images given as paths, PIL images or numpy arrays (RGB, any size/mode).

    Images are preprocessed with the model's own eval pipeline (from its checkpoint), batched ``batch_size`` at a
    time (images of equal size together, so batching never changes a result), run on ``device`` (``auto``: CUDA
    when present) with AMP where safe (``amp=auto``: bf16/fp16 autocast for the forward pass on CUDA only;
    averaging and the activation stay float32), optionally with slide inference and multi-scale/flip TTA.

    Logits become labels and probabilities as the model's :attr:`task` says (:mod:`segdense.tasks`): multiclass
    softmax and argmax; binary sigmoid and the checkpoint's threshold (labels 0/1); multilabel a sigmoid and the
    threshold per class (labels (C, H, W) of 0/1).

    ``fold_batchnorms`` runs a copy of the model with each BatchNorm that follows a convolution folded into it
    (:func:`segdense.models.batchnorm_fusion.fold_conv_batchnorms`): the same predictions up to float rounding, fewer
    passes over the feature maps. ONNX models have theirs folded by ONNX Runtime already.

    >>> predictor = Predictor.from_checkpoint("best.pt")
    >>> labels = predictor.predict("street.jpg")      # (H, W) int64 class indices
    >>> probs = predictor.predict_proba(image_array)   # (C, H, W) float32, sums to 1 over C (multiclass)
    """

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "auto", amp: str | bool = "auto",
                 mode: str = "whole", crop_size: int | Sequence[int] | None = None,
                 stride: int | Sequence[int] | None = None, scales: Sequence[float] | None = None,
                 flip: bool = False, batch_size: int = 4, blend: str = "mean", fold_batchnorms: bool = False):
        self.bundle = bundle
        self.task = bundle.task
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        self.amp_dtype = resolve_amp(amp, self.device)
        self.model = bundle.model.to(self.device).eval()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.min_size = min_input_size(self.model)
        if fold_batchnorms and not isinstance(self.model, OnnxModel):
            self.model = fold_conv_batchnorms(self.model, self._example())
        crop = crop_size if crop_size is not None else bundle.crop_size
        self.infer = build_infer(mode, crop, stride, scales, flip, min_size=self.min_size, max_batch=self.batch_size,
                                 blend=blend)
        self._transform = None
        self._tables: dict[tuple, np.ndarray | None] = {}  # window_batch's lookup tables by (dtype, bands)

    def _example(self) -> torch.Tensor:
        """A random input batch the model takes (one image at least 64 pixels a side), on its device."""
        parameter = next(self.model.parameters(), torch.empty(0))
        size = max(self.min_size, 64)
        return torch.randn(1, input_channels(self.model), size, size, generator=torch.Generator().manual_seed(0)).to(
            self.device, parameter.dtype)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        **kwargs: Any) -> "Predictor":
        """Rebuild the model from a segdense ``.pt`` checkpoint or ``.safetensors`` file, or run an ``.onnx`` export of
        one with ONNX Runtime (same pre- and post-processing, from its metadata); ``kwargs`` as for
        :class:`Predictor` (``amp``, ``mode``, ``crop_size``, ``stride``, ``scales``, ``flip``, ``batch_size``,
        ``blend``, ``fold_batchnorms``)."""
        return cls(load_bundle(path), device=device, **kwargs)

    @classmethod
    def from_model(cls, model: torch.nn.Module, class_names: Sequence[str] | None = None,
                   palette: Sequence[Sequence[int]] | None = None, task: dict | None = None,
                   **kwargs: Any) -> "Predictor":
        """Wrap a model already in memory (e.g. from :func:`segdense.load_model` or a training loop); class names
        and palette default to the model's ``class_names``/``palette`` attributes, else indices and VOC colours;
        ``task`` is :func:`segdense.tasks.build_task`'s arguments (default multiclass, e.g. ``{"name": "binary",
        "threshold": 0.4}`` with two class names). Images are normalised with ImageNet mean/std."""
        num_classes = int(getattr(model, "model_config", {}).get("num_classes", 0)) or None
        names = list(class_names or getattr(model, "class_names", None) or [])
        if not names:
            if num_classes is None:
                raise ValueError("pass class_names: the model has no model_config['num_classes'] to count them")
            names = [str(i) for i in range(num_classes)]
        colours = palette or getattr(model, "palette", None) or default_palette(len(names))
        bundle = ModelBundle(model, names, [list(c) for c in colours], source=type(model).__name__,
                             task_config=dict(task or {"name": "multiclass"}))
        return cls(bundle, **kwargs)

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @property
    def palette(self) -> list[list[int]]:
        return self.bundle.palette

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    def predict(self, image: Any) -> np.ndarray:
        """int64 labels at the image's own size: (H, W) class indices (binary: 0/1), multilabel (C, H, W) 0/1."""
        return self.predict_batch([image])[0]

    def predict_proba(self, image: Any) -> np.ndarray:
        """float32 probabilities at the image's own size: (C, H, W) softmax (multiclass), (1, H, W) foreground
        sigmoid (binary) or (C, H, W) independent sigmoids (multilabel)."""
        return self.probabilities(self.logits_batch([image])[0])

    def predict_batch(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Labels for each image (see :meth:`predict`)."""
        return [self.labels(logits) for logits in self.logits_batch(images)]

    def labels(self, logits: torch.Tensor) -> np.ndarray:
        """One image's (C, H, W) logits as labels (see :meth:`predict`)."""
        return self.task.labels(logits[None])[0].numpy()

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """One image's (C, H, W) logits as probabilities (see :meth:`predict_proba`)."""
        return self.task.activation(logits[None])[0].numpy()

    def read(self, source: Any) -> np.ndarray:
        """A path, PIL image or array as (H, W, C), read as the model's training dataset read its images (the same
        reader, ``bands`` and ``layout``; arrays in the file's own units, or 8-bit RGB for an 8-bit RGB model)."""
        return load_image(source, rgb_arrays=self.bundle.takes_8bit_rgb, **self.bundle.reading)

    @property
    def transform(self):
        """The model's eval pipeline (:class:`segdense.data.transforms.SegmentationTransform`), built when first
        used."""
        if self._transform is None:
            from segdense.data import build_transforms  # albumentations: imported when first used

            self._transform = build_transforms(self.bundle.eval_pipeline, in_channels=self.in_channels)
        return self._transform

    def preprocess(self, image: Any) -> tuple[np.ndarray, torch.Tensor]:
        """(the image as read, normalised float tensor (C, h, w)) through the model's eval pipeline; one
        :class:`ImageReadError` naming the image when the pipeline or the model cannot take it."""
        array = self.read(image)
        try:
            tensor, _ = self.transform(array, np.zeros(array.shape[:2], dtype=np.uint8))
        except ImageReadError as exc:
            raise ImageReadError(image if isinstance(image, (str, os.PathLike)) else "image", exc.problem) from None
        return array, tensor

    @property
    def in_channels(self) -> int:
        """The band count the model takes."""
        return input_channels(self.model)

    def window_batch(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        """Windows of one scene, all of one size (h, w, bands), as one normalised batch (B, C, h, w): each window's
        :meth:`preprocess` tensor. An 8- or 16-bit scene under a per-value pipeline (the usual normalisation) is
        mapped through the pipeline's lookup table (:meth:`SegmentationTransform.lookup_table`): the same numbers
        without running the pipeline on every window. Windows the pipeline refuses go through it, which raises."""
        arrays = [self.read(window) for window in windows]
        first = arrays[0]
        key = (first.dtype.str, first.shape[2])
        if key not in self._tables:
            self._tables[key] = self.transform.lookup_table(first.dtype, first.shape[2])
        table = self._tables[key]
        if table is None or len({a.shape for a in arrays}) > 1:
            return torch.stack([self.preprocess(a)[1] for a in arrays])
        batch = torch.empty((len(arrays), first.shape[2], *first.shape[:2]))
        for array, item in zip(arrays, batch.numpy()):
            for band in range(array.shape[2]):
                np.take(table[band], array[..., band], out=item[band])
        return batch

    @torch.inference_mode()
    def logits_of_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits (B, num_classes, h, w) on the CPU of a normalised batch (:meth:`window_batch`)."""
        return self._forward(batch.to(self.device)).float().cpu()

    def logits_batch(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Float32 logits (num_classes, H, W) on the CPU for each image, at the image's own size."""
        return self.logits_prepared([self.preprocess(image) for image in images])

    @torch.inference_mode()
    def logits_prepared(self, prepared: Sequence[tuple[np.ndarray, torch.Tensor]]) -> list[torch.Tensor]:
        """:meth:`logits_batch` of images already through :meth:`preprocess`."""
        by_size: dict[tuple, list[int]] = defaultdict(list)
        for i, (_, tensor) in enumerate(prepared):
            by_size[tuple(tensor.shape)].append(i)
        results: list[torch.Tensor | None] = [None] * len(prepared)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = torch.stack([prepared[i][1] for i in chunk]).to(self.device)
                logits = self._forward(batch)
                for i, item in zip(chunk, logits):
                    size = prepared[i][0].shape[:2]
                    if tuple(item.shape[-2:]) != tuple(size):  # the eval pipeline resized the image
                        item = F.interpolate(item[None], size=size, mode="bilinear", align_corners=False)[0]
                    results[i] = item.float().cpu()
        return results  # type: ignore[return-value]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        h, w = batch.shape[-2:]
        if min(h, w) < self.min_size:  # smaller than the backbone accepts: pad bottom/right, crop the logits
            batch = F.pad(batch, (0, max(0, self.min_size - w), 0, max(0, self.min_size - h)))
        with autocast_context(self.device, self.amp_dtype):
            return self.infer(self.model, batch).float()[..., :h, :w]

    def __repr__(self) -> str:
        mc = getattr(self.model, "model_config", {})
        names = [(mc.get(part) or {}).get("name") for part in ("backbone", "head")]
        return (f"Predictor({names[0]} + {names[1]}, {self.task.name}, {self.num_classes} classes, "
                f"device={self.device}, infer={describe_infer(self.infer)})")

