"""DataLoader plumbing: per-image augmentation seeds that do not depend on worker count or
worker lifetime, so that a seed fixes the augmentations and a resumed epoch repeats them."""
from __future__ import annotations

import os
from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Dataset, Sampler

from .seeding import sample_seeds

MAX_DEFAULT_WORKERS = 6  # past about 6 loader processes a 2-8 core machine gains nothing


def default_workers() -> int:
    """Loader worker processes when none are asked for: the cores this process may use, at most
    MAX_DEFAULT_WORKERS (main.py's --kernels and the tools' --num_workers alike)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(MAX_DEFAULT_WORKERS, cores or 1)


class SeededBatches(Sampler[List[Tuple[int, int]]]):
    """Wraps a batch sampler (a ``datasampler.BaseBatchSampler``: ``epoch``, ``start_batch``):
    every index becomes ``(index, augmentation_seed)``."""

    def __init__(self, batch_sampler: Sampler[List[int]], seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        first = self.batch_sampler.start_batch
        for number, batch in enumerate(self.batch_sampler, start=first):
            seeds = sample_seeds(self.seed, self.batch_sampler.epoch, number, len(batch))
            yield list(zip(batch, seeds))


class SeededDataset(Dataset):
    """Seeds torch's RNG with the item's own seed before loading it (random crops and flips of
    torchvision transforms draw from torch's global RNG)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(seed)
            return self.dataset[index]
