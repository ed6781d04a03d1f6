"""Class-balanced batches of bs / samples_per_class class draws, samples_per_class images each.

``class_random`` follows the published DAS / Revisiting-DML sampler: every batch draws its
classes uniformly *with replacement* and every image uniformly *with replacement* inside its
class, so a batch of 56 class draws from CUB's 100 classes holds about 43 distinct classes and
may repeat an image. ``class_random_distinct`` (``class_random_distinct.py``) draws distinct
classes and distinct images instead. See docs/PARITY.md.
"""
from __future__ import annotations

from typing import List

import numpy as np

from . import REGISTRY
from ._base import BaseBatchSampler


@REGISTRY.register("class_random")
class ClassRandomSampler(BaseBatchSampler):
    """Each batch: ``bs / samples_per_class`` classes drawn uniformly with replacement, then
    ``samples_per_class`` images of each drawn class uniformly with replacement (published).

    The global batch is laid out class draw by class draw, so every rank of a distributed run
    takes whole class draws; a class drawn twice contributes two groups of rows with one label.
    """

    distinct = False  # the subclass class_random_distinct draws without replacement

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, class_names=None) -> None:
        super().__init__(labels, batch_size, samples_per_class, seed, rank, world_size)
        self.check_class_groups()
        self.classes_per_batch = batch_size // samples_per_class
        order = np.argsort(self.labels, kind="stable")
        classes, starts, counts = np.unique(self.labels[order], return_index=True,
                                            return_counts=True)
        if self.distinct:
            smallest = int(np.argmin(counts))
            if counts[smallest] < samples_per_class:
                name = (class_names[classes[smallest]] if class_names is not None
                        else classes[smallest])
                raise ValueError(f"--samples_per_class {samples_per_class} is larger than "
                                 f"training class '{name}', which has {counts[smallest]} "
                                 f"image(s) ({self.registry_name} draws distinct images)")
            if len(classes) < self.classes_per_batch:
                raise ValueError(f"a batch of --bs {batch_size} with --samples_per_class "
                                 f"{samples_per_class} needs {self.classes_per_batch} distinct "
                                 f"classes, but the training split has only {len(classes)}")
        self._order, self._starts, self._counts = order, starts, counts
        self._members = [order[s:s + c] for s, c in zip(starts, counts)]

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        n_batches = max(len(self.labels) // self.batch_size, 1)
        shape = (n_batches, self.classes_per_batch)
        chosen = rng.integers(0, len(self._counts), size=shape)
        offsets = np.floor(rng.random(shape + (self.samples_per_class,))
                           * self._counts[chosen][..., None]).astype(np.int64)
        rows = self._order[self._starts[chosen][..., None] + offsets]
        return list(rows.reshape(n_batches, self.batch_size))
