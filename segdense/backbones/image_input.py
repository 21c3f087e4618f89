"""What every backbone does with its input before the first layer: one clear error for a batch it cannot take, and
the choice of memory format."""
from __future__ import annotations

import torch


def check_image_batch(x: torch.Tensor, in_channels: int, min_size: int, because: str) -> None:
    """One clear error for an input a backbone cannot take: not (N, in_channels, H, W), or smaller than ``min_size``
    (``because`` says why, e.g. ``"at output_stride=32"``). The size is not checked while tracing: an exported graph
    takes other sizes than the one it was traced with."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected an input of shape (N, {in_channels}, H, W), got {tuple(x.shape)}")
    if not torch.jit.is_tracing() and min(x.shape[-2:]) < min_size:
        raise ValueError(
            f"input of size {tuple(x.shape[-2:])} is too small: height and width must be at least {min_size} {because}"
        )


def use_channels_last(setting: bool | None, x: torch.Tensor) -> bool:
    """Whether a backbone with ``channels_last=setting`` runs ``x`` channels-last (``None``: on CPU inputs)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False  # exported graphs stay format-neutral
    if setting is None:
        return x.device.type == "cpu"
    return setting
