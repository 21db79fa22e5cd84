"""Deterministic, resumable batch order for any number of processes.

Epoch e's order is a permutation drawn from (seed, e); each rank takes every world-th index of
each global batch, so the global batch is the same whatever the world size. Resuming at step s
starts at s's epoch and offset: no sampler state to save. Array datasets are gathered by index
in the main process (fast); other datasets go through a DataLoader with worker processes.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..seeds import generator, mix


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = generator(mix(seed, epoch))
    return torch.randperm(n, generator=g)


class BatchStream:
    """Infinite stream of (uint8 images, labels) local batches, starting at global step ``start``.

    Each global batch has ``global_batch`` images (the last partial batch of an epoch is dropped);
    this rank's share is ``global_batch // world`` of them."""

    def __init__(self, dataset: Dataset, global_batch: int, seed: int, rank: int = 0,
                 world: int = 1, start: int = 0, num_workers: int = 0):
        n = len(dataset)
        if global_batch > n:
            raise ValueError(f"global batch {global_batch} exceeds the dataset size {n}")
        self.dataset, self.global_batch, self.seed = dataset, global_batch, seed
        self.rank, self.world, self.start, self.num_workers = rank, world, start, num_workers
        self.steps_per_epoch = n // global_batch

    def local_indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = epoch_permutation(len(self.dataset), self.seed, epoch)
        batch = perm[k * self.global_batch:(k + 1) * self.global_batch]
        return batch[self.rank::self.world]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = self.start
        if hasattr(self.dataset, "gather"):
            while True:
                yield self.dataset.gather(self.local_indices(step))
                step += 1
        while True:  # folder datasets: one epoch's remaining batches through worker processes
            epoch = step // self.steps_per_epoch
            batches = [self.local_indices(s).tolist()
                       for s in range(step, (epoch + 1) * self.steps_per_epoch)]
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                persistent_workers=False, pin_memory=torch.cuda.is_available())
            for xb, yb in loader:
                yield xb, yb
                step += 1


def iterate_in_order(dataset: Dataset, batch: int, num_workers: int = 0
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass in dataset order (evaluation, feature extraction, tokenizer fit)."""
    n = len(dataset)
    if hasattr(dataset, "gather"):
        for i in range(0, n, batch):
            yield dataset.gather(torch.arange(i, min(i + batch, n)))
        return
    yield from DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=num_workers)
