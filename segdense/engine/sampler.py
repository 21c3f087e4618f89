"""An endless, resumable, rank-aware stream of sample indices for iteration-based training.

Position ``p`` of the global stream (p = iteration * global_batch + slot) maps to one sample of a
seeded per-epoch permutation, and carries its own augmentation seed, so a run resumed at any
iteration sees exactly the samples and augmentations an uninterrupted run would have seen, however
many workers load them. Under ``torch.distributed`` each rank takes its own slots of every global
batch (the role a ``DistributedSampler`` plays for epoch-based loops).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the sample at ``position`` of the stream of run seed ``seed``."""
    return (seed * 1_000_003 + position * 7_919 + 12_345) % (2**31 - 1)


class ResumableSampler(Sampler):
    """Yields ``(index, augmentation_seed)`` pairs forever, starting at ``start_iteration``."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int = 0, start_iteration: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if dataset_size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n = dataset_size
        self.batch_size = batch_size  # per rank
        self.seed = seed
        self.start_iteration = start_iteration
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 10_007 + epoch)
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self) -> Iterator[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        iteration = self.start_iteration
        while True:
            base = iteration * global_batch + self.rank * self.batch_size
            for position in range(base, base + self.batch_size):
                epoch, offset = divmod(position, self.n)
                yield int(self._permutation(epoch)[offset]), sample_seed(self.seed, position)
            iteration += 1


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded with its augmentations seeded
    by ``seed`` (the transform's and the dataset's ``set_random_seed`` where they have one, plus the global
    RNGs)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        import random

        import numpy as np

        index, seed = item
        # Seed the global RNGs for this sample only; the caller's streams (dropout in the main
        # process when num_workers=0) continue as if nothing had been loaded.
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            # the transform's augmentations, and the dataset's own draws (random windows of large scenes)
            for seeded in (getattr(self.dataset, "transform", None), self.dataset):
                if hasattr(seeded, "set_random_seed"):
                    seeded.set_random_seed(seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
