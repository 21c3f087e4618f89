"""Export parity on real images: the exported runtime against eager PyTorch on images of the checkpoint's
validation set (or a folder), judged by the label maps its task makes (multiclass argmax, binary and multilabel
sigmoids above the threshold), not only by logits on random input.

A random-input logit check misses what users of exported models report (mmdeploy #1979, #2513, #777): fp16 and
runtime differences that flip the predicted class on real pixels. Here the share of pixels whose argmax class
agrees must reach a threshold (default 99.9 %), and the largest logit difference is reported beside it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from segdense.data import build_dataset, build_transforms
from segdense.inference.images import ImageReadError, find_images, load_image
from segdense.inference.loading import input_channels
from segdense.tasks import Task

from .formats import ExportError, LogitsOnly, onnx_run

DEFAULT_MIN_AGREEMENT = 99.9  # percent of pixels whose argmax class agrees


def load_runtime(format: str, path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images -> float32 logits running the exported file (onnxruntime or torch.jit)."""
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: onnx_run(session, x)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return scripted(x).float()

        return run
    raise ValueError(f"no runtime to check format={format!r} with; expected onnx or torchscript")


def checkpoint_dataset(bundle, split_key: str = "val_split", hint: str = "pass verify_input=DIR (a folder of images) "
                       "or verify_images=0"):
    """The checkpoint's dataset at its ``split_key`` split (``val_split`` or ``train_split``), through its eval
    pipeline; one :class:`ExportError` ending in ``hint`` (what to do instead) when it cannot be opened."""
    block = dict((bundle.dataset or {}).get("config") or {})
    if not block:
        raise ExportError(f"{bundle.source} does not say which dataset it was trained on: {hint}")
    name = block.pop("name")
    split = block.pop(split_key, None) or ("train" if split_key == "train_split" else "val")
    what = "training set" if split_key == "train_split" else "validation set"
    try:
        transform = build_transforms(bundle.eval_pipeline, in_channels=input_channels(bundle.model))
        return build_dataset(name, split=split, transform=transform, **block)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise ExportError(f"cannot open the checkpoint's {what} ({name}, split {split!r}): {exc}\n{hint}") from None


def validation_images(bundle, count: int) -> list[tuple[str, torch.Tensor]]:
    """The first ``count`` images of the checkpoint's validation split, through its eval pipeline."""
    return dataset_images(checkpoint_dataset(bundle), count)


def choose_indices(total: int, count: int, seed: int | None = None) -> list[int]:
    """``min(count, total)`` indices of ``range(total)``, in order: the first ones, or with ``seed`` a seeded random
    choice (the same on every call and machine for the same torch version)."""
    if seed is None or count >= total:
        return list(range(min(count, total)))
    return sorted(torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:count].tolist())


def dataset_images(dataset, count: int, seed: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """(name, image tensor) of ``count`` samples of ``dataset``, chosen by :func:`choose_indices`."""
    indices = choose_indices(len(dataset), count, seed)
    names = [dataset.describe(i)[0] if hasattr(dataset, "describe") else f"sample {i}" for i in indices]
    return [(n, dataset[i][0]) for i, n in zip(indices, names)]


def folder_images(bundle, directory: str | os.PathLike, count: int) -> list[tuple[str, torch.Tensor]]:
    """The first ``count`` images (sorted by path) under ``directory``, through the checkpoint's eval pipeline."""
    return file_images(bundle, find_images(str(directory))[:count])


def file_images(bundle, paths: Sequence[str | os.PathLike]) -> list[tuple[str, torch.Tensor]]:
    """(path, image tensor) of each image file, through the checkpoint's eval pipeline; one
    :class:`ImageReadError` naming the file the pipeline or the model cannot take."""
    transform = build_transforms(bundle.eval_pipeline, in_channels=input_channels(bundle.model))
    images = []
    for path in paths:
        image = load_image(path, rgb_arrays=bundle.takes_8bit_rgb, **bundle.reading)
        try:
            images.append((str(path), transform(image, np.zeros(image.shape[:2], dtype=np.uint8))[0]))
        except ImageReadError as exc:
            raise ImageReadError(path, exc.problem) from None
    return images


def parity_on_images(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
                     images: Sequence[tuple[str, torch.Tensor]], task: Task | None = None) -> dict:
    """Run every image (batch 1, its own size) through eager ``model`` (fp32) and ``run``; returns ``images``,
    ``pixels``, ``max_abs_diff`` (largest logit difference), ``max_proba_diff`` (largest difference of the task's
    probabilities), ``agreement`` (% of the labels that agree, as ``task`` makes them from the logits: pixels, or
    for multilabel (pixel, class) pairs; default: argmax) and ``worst`` (the image with the lowest agreement, and
    its agreement)."""
    if not images:
        raise ExportError("no image to check the export on (verify_images=0 or an empty verify_input folder)")
    reference = LogitsOnly(model).float().eval()
    labels = task.labels if task is not None else (lambda logits: logits.argmax(1))
    activation = task.activation if task is not None else (lambda logits: logits.softmax(1))
    agree = compared = pixels = 0
    max_diff, max_proba_diff, worst = 0.0, 0.0, ("", 101.0)
    for name, image in images:
        x = image.unsqueeze(0).float()
        with torch.no_grad():
            expected = reference(x).float()
        got = run(x)
        if got.shape != expected.shape:
            raise ExportError(f"the export gave logits of shape {tuple(got.shape)} for {name}, PyTorch "
                              f"{tuple(expected.shape)}")
        matches = labels(got) == labels(expected)
        same, count = int(matches.sum()), matches.numel()
        agree, compared = agree + same, compared + count
        pixels += expected.shape[0] * expected.shape[2] * expected.shape[3]
        max_diff = max(max_diff, float((got - expected).abs().max()))
        max_proba_diff = max(max_proba_diff, float((activation(got) - activation(expected)).abs().max()))
        if 100.0 * same / count < worst[1]:
            worst = (name, 100.0 * same / count)
    return {"images": len(images), "pixels": pixels, "max_abs_diff": max_diff, "max_proba_diff": max_proba_diff,
            "agreement": 100.0 * agree / compared, "worst": {"image": worst[0], "agreement": worst[1]}}


def check_parity_on_images(model: nn.Module, format: str, path: str | os.PathLike,
                           images: Sequence[tuple[str, torch.Tensor]],
                           min_agreement: float = DEFAULT_MIN_AGREEMENT, task: Task | None = None) -> dict:
    """:func:`parity_on_images` for the exported file at ``path`` (labels as ``task`` makes them); below
    ``min_agreement`` percent the file is removed and :class:`ExportError` says by how much it failed and on which
    image."""
    result = parity_on_images(model, load_runtime(format, path), images, task)
    if result["agreement"] < min_agreement:
        Path(path).unlink(missing_ok=True)
        raise ExportError(
            f"the exported {format} model agrees with PyTorch on {result['agreement']:.3f} % of the labels of "
            f"{result['images']} real image(s) (< {min_agreement:g} %; worst {result['worst']['image']}: "
            f"{result['worst']['agreement']:.2f} %; largest logit difference {result['max_abs_diff']:.3g}); "
            f"{path} was removed")
    return result
