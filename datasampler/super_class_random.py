"""``super_class_random``: class-balanced batches drawn inside a few super-classes (SOP).

Published semantics (``datasampler/super_class_random_sampler.py`` of DAS): for every batch,
``--data_num_super`` distinct super-classes are drawn at random; then, as in ``class_random``,
bs / samples_per_class classes are drawn uniformly *with replacement* among the classes of those
super-classes, and samples_per_class images of each uniformly with replacement. Batches thus
hold hard negatives from the same product category. Needs a dataset that gives super-class
labels (``online_products``; the train/validation split keeps them).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

import numpy as np

from utilities.options import Option, positive_int

from . import REGISTRY
from .class_random import ClassRandomSampler


@REGISTRY.register("super_class_random")
class SuperClassRandomSampler(ClassRandomSampler):
    options = (
        Option("--data_num_super", default=1, type=positive_int,
               help="super_class_random: super-classes drawn per batch."),
    )

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, class_names=None,
                 super_labels: Optional[np.ndarray] = None, num_super: int = 1) -> None:
        super().__init__(labels, batch_size, samples_per_class, seed, rank, world_size,
                         class_names)
        if super_labels is None:
            raise ValueError("--data_sampler super_class_random needs super-class labels; only "
                             "--dataset online_products provides them")
        super_labels = np.asarray(super_labels, dtype=np.int64)
        # The super-class of each class (index into self._counts): that of its first image.
        class_super = super_labels[self._order[self._starts]]
        self._supers, class_super = np.unique(class_super, return_inverse=True)
        if not 1 <= num_super <= len(self._supers):
            raise ValueError(f"--data_num_super {num_super} must lie between 1 and the "
                             f"{len(self._supers)} super-classes of the training split")
        self.num_super = num_super
        self._super_members = [np.flatnonzero(class_super == s) for s in range(len(self._supers))]

    @classmethod
    def own_arguments(cls, opt: argparse.Namespace,
                      super_labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
        return dict(super().own_arguments(opt, super_labels), super_labels=super_labels,
                    num_super=opt.data_num_super)

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        n_batches = max(len(self.labels) // self.batch_size, 1)
        batches = []
        for _ in range(n_batches):  # per batch, not per sample: its class pool differs
            chosen = rng.permutation(len(self._supers))[:self.num_super]
            pool = np.concatenate([self._super_members[s] for s in chosen])
            classes = pool[rng.integers(0, len(pool), size=self.classes_per_batch)]
            offsets = np.floor(rng.random((self.classes_per_batch, self.samples_per_class))
                               * self._counts[classes][:, None]).astype(np.int64)
            batches.append(self._order[self._starts[classes][:, None] + offsets].reshape(-1))
        return batches
