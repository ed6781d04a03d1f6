"""``class_random_distinct``: class-balanced batches of distinct classes and distinct images."""
from __future__ import annotations

from typing import List

import numpy as np

from . import REGISTRY
from .class_random import ClassRandomSampler


@REGISTRY.register("class_random_distinct")
class ClassRandomDistinctSampler(ClassRandomSampler):
    """``bs / samples_per_class`` distinct classes per batch (without replacement within a batch,
    independently across batches), ``samples_per_class`` distinct images of each.

    Not the published sampler (``class_random`` draws with replacement): every batch has the full
    number of classes and no repeated image. A class smaller than samples_per_class, or fewer
    classes than a batch needs, is refused at start-up.
    """

    distinct = True

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        n_batches = max(len(self.labels) // self.batch_size, 1)
        batches = []
        for _ in range(n_batches):  # per batch, not per sample: runs once per epoch, on the host
            chosen = rng.choice(len(self._members), self.classes_per_batch, replace=False)
            batches.append(np.concatenate([
                rng.choice(self._members[c], self.samples_per_class, replace=False)
                for c in chosen]))
        return batches
