"""Plain random batches (a shuffled epoch cut into batches; the last partial batch is dropped)."""
from __future__ import annotations

from typing import List

import numpy as np

from . import REGISTRY
from ._base import BaseBatchSampler


@REGISTRY.register("random")
class RandomSampler(BaseBatchSampler):
    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, class_names=None) -> None:
        super().__init__(labels, batch_size, samples_per_class, seed, rank, world_size)
        if len(self.labels) < batch_size:
            raise ValueError(f"--bs {batch_size} is larger than the training split "
                             f"({len(self.labels)} images)")

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        permutation = rng.permutation(len(self.labels))
        n_batches = len(self.labels) // self.batch_size
        return [permutation[i * self.batch_size:(i + 1) * self.batch_size]
                for i in range(n_batches)]
