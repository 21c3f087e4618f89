"""The validation loop: whole-image inference over a loader, metrics over the whole set."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from segdense.metrics import SegmentationMetrics


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def whole_image_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    return out["out"] if isinstance(out, dict) else out


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    metrics: SegmentationMetrics,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] = whole_image_logits,
    progress: bool = False,
    on_first_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict:
    """Run ``infer(model, images)`` on every batch of ``loader`` (items start with images and
    masks; padded mask pixels are 255 and so ignored) and return ``metrics.compute()``."""
    was_training = model.training
    model.eval()
    metrics.reset()
    batches = loader
    if progress:
        import sys

        from tqdm import tqdm

        # A bar on terminals only: in logs and pipes it would be noise.
        batches = tqdm(loader, desc="val", leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())
    for i, batch in enumerate(batches):
        images, masks = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            logits = infer(model, images)
        prediction = logits.argmax(1)
        metrics.update(prediction, masks)
        if i == 0 and on_first_batch is not None:
            on_first_batch(images, masks, prediction)
    model.train(was_training)
    return metrics.compute()
