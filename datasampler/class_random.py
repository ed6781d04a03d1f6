"""Class-balanced batches: bs / samples_per_class distinct classes, samples_per_class images each.

This is the sampler of the paper (bs 112, 2 images per class). Classes are drawn without
replacement within a batch and independently across batches; images without replacement within
their class.
"""
from __future__ import annotations

from typing import List

import numpy as np

from . import REGISTRY
from ._base import BaseBatchSampler


@REGISTRY.register("class_random")
class ClassRandomSampler(BaseBatchSampler):
    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, class_names=None) -> None:
        super().__init__(labels, batch_size, samples_per_class, seed, rank, world_size)
        if samples_per_class <= 0:
            raise ValueError(f"--samples_per_class must be positive, got {samples_per_class}")
        if batch_size % samples_per_class:
            raise ValueError(f"--bs {batch_size} is not divisible by --samples_per_class "
                             f"{samples_per_class}: a class_random batch holds bs / "
                             f"samples_per_class classes")
        self.classes_per_batch = batch_size // samples_per_class
        if (batch_size // world_size) % samples_per_class:
            raise ValueError(f"each of the {world_size} processes gets --bs / processes = "
                             f"{batch_size // world_size} images, which must be divisible by "
                             f"--samples_per_class {samples_per_class}")
        order = np.argsort(self.labels, kind="stable")
        classes, starts, counts = np.unique(self.labels[order], return_index=True,
                                            return_counts=True)
        smallest = int(np.argmin(counts))
        if counts[smallest] < samples_per_class:
            name = class_names[classes[smallest]] if class_names is not None else classes[smallest]
            raise ValueError(f"--samples_per_class {samples_per_class} is larger than training "
                             f"class '{name}', which has {counts[smallest]} image(s)")
        if len(classes) < self.classes_per_batch:
            raise ValueError(f"a batch of --bs {batch_size} with --samples_per_class "
                             f"{samples_per_class} needs {self.classes_per_batch} distinct classes, "
                             f"but the training split has only {len(classes)}")
        self._members = [order[s:s + c] for s, c in zip(starts, counts)]

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        n_batches = max(len(self.labels) // self.batch_size, 1)
        batches = []
        for _ in range(n_batches):
            chosen = rng.choice(len(self._members), self.classes_per_batch, replace=False)
            batches.append(np.concatenate([
                rng.choice(self._members[c], self.samples_per_class, replace=False)
                for c in chosen]))
        return batches
