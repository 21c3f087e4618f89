"""DataLoader builder: seeded workers, distributed sampling, and an eval collate for images of any size."""
from __future__ import annotations

import os
import random
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from segdense.errors import ConfigError

from .io import IGNORE_INDEX


MAX_AUTO_WORKERS = 8


def resolve_num_workers(num_workers: int | str) -> int:
    """``num_workers`` as a count: ``auto`` is the cores this process may run on (``os.sched_getaffinity``; the
    CPU count where that is missing), at most :data:`MAX_AUTO_WORKERS`."""
    if num_workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(cores, MAX_AUTO_WORKERS)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers must be auto or a count >= 0, got {num_workers!r}")
    return num_workers


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch samples of different sizes: images padded with 0 and masks with 255 at the bottom/right.

    Returns ``(images (N, C, H, W), masks (N, H, W), sizes (N, 2))`` with each sample's original (height, width);
    multilabel masks (C, H, W) give masks (N, C, H, W).
    """
    heights = [image.shape[-2] for image, _ in batch]
    widths = [image.shape[-1] for image, _ in batch]
    max_h, max_w = max(heights), max(widths)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], max_h, max_w))
    bands = tuple(batch[0][1].shape[:-2])  # () for class maps, (C,) for multilabel masks
    masks = torch.full((len(batch), *bands, max_h, max_w), IGNORE_INDEX, dtype=torch.long)
    for i, (image, mask) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, ..., : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks, torch.tensor(list(zip(heights, widths)), dtype=torch.long)


class _SeedWorker:
    """Seeds Python, NumPy and the dataset's transform in each worker from the loader's base seed."""

    def __call__(self, worker_id: int) -> None:
        seed = torch.initial_seed() % 2**32  # differs per worker and per epoch, derived from the loader generator
        random.seed(seed)
        np.random.seed(seed)
        info = torch.utils.data.get_worker_info()
        transform = getattr(info.dataset, "transform", None) if info is not None else None
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)


class ShardSampler(torch.utils.data.Sampler):
    """Rank ``rank``'s share of ``dataset_size`` indices: every ``world_size``-th run of ``block`` consecutive
    indices, starting at run ``rank``, in order, without the padding ``DistributedSampler`` adds. Each sample goes to
    exactly one process; the last shards may be shorter, or empty when there are more processes than runs. With
    ``block`` = the batch size, every batch a process forms is one a single process would form (same images, same
    padding), so its results are the single process's, bit for bit."""

    def __init__(self, dataset_size: int, rank: int, world_size: int, block: int = 1) -> None:
        if not 0 <= rank < world_size or block < 1:
            raise ValueError(f"need 0 <= rank < world_size and block >= 1, got rank={rank}, "
                             f"world_size={world_size}, block={block}")
        starts = range(rank * block, dataset_size, world_size * block)
        self.indices = [i for start in starts for i in range(start, min(start + block, dataset_size))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_dataloader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0,
                     pin_memory: bool | None = None, persistent_workers: bool | None = None,
                     drop_last: bool | None = None) -> DataLoader:
    """A DataLoader for training (shuffled, ``drop_last``) or evaluation (in order, :func:`pad_collate`).

    Under an initialised ``torch.distributed`` process group each rank gets a ``DistributedSampler`` shard for
    training and a :class:`ShardSampler` of whole batches (no duplicated samples, so metrics count each image once,
    and each batch is the one a single process would form) for evaluation
    (call :func:`infinite_batches`, or ``loader.sampler.set_epoch`` yourself, to reshuffle per epoch).
    ``pin_memory`` defaults to whether CUDA is available, ``persistent_workers`` to ``num_workers > 0``.
    Training batches are ``(images, masks)``; evaluation batches ``(images, masks, sizes)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if train and len(dataset) < batch_size and drop_last is not False:
        raise ValueError(f"the training set has {len(dataset)} samples, fewer than one batch of {batch_size}")
    generator = torch.Generator().manual_seed(int(seed))
    if dist.is_available() and dist.is_initialized() and train:
        sampler = DistributedSampler(dataset, shuffle=True, seed=int(seed), drop_last=True)
    elif dist.is_available() and dist.is_initialized():
        sampler = ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size(), block=batch_size)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=None if train else pad_collate, pin_memory=pin_memory,
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=_SeedWorker() if num_workers > 0 else None, generator=generator,
    )


def infinite_batches(loader: DataLoader) -> Iterator:
    """Batches from ``loader`` forever, for iteration-based training; reshuffles (``set_epoch``) every pass."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the data loader yields no batches (dataset empty or smaller than one batch)")
        epoch += 1
