"""``greedy_coreset``: each batch's class groups are anchored at a greedy k-center coreset of a
random big batch of storage embeddings.

Published semantics (``datasampler/greedy_coreset_sampler.py``): draw ``--data_batchmatch_bigbs``
candidates from the storage without replacement (optionally projected to
``--data_sampler_lowproj_dim``); squared distances D between them; every candidate's score starts
as the L2 norm of its row of D. The first anchor is a uniformly random candidate, each further one
the candidate of largest score (``--data_gc_softened``: a uniform draw among the candidates whose
score reaches the 97th percentile); after each pick, score = min(score, D[:, pick]). bs /
samples_per_class anchors; each is completed by samples_per_class - 1 images of its class drawn
uniformly with replacement. ``--data_gc_coreset_lim`` is accepted and unused, as published.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

import numpy as np

from utilities.options import Option, non_negative_float

from . import REGISTRY
from ._storage import StorageBatchSampler, squared_distances


@REGISTRY.register("greedy_coreset")
class GreedyCoresetSampler(StorageBatchSampler):
    options = StorageBatchSampler.options + (
        Option("--data_gc_coreset_lim", default=1e-9, type=non_negative_float,
               help="greedy_coreset: accepted for the published scripts (unused there)."),
        Option("--data_gc_softened", action="store_true",
               help="greedy_coreset: draw among the top 3%% farthest points instead of the "
                    "farthest."),
    )

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, *,
                 softened: bool = False, **storage_arguments) -> None:
        """``storage_arguments``: the keywords of StorageBatchSampler (seed, rank, bigbs, ...)."""
        self.softened = softened
        super().__init__(labels, batch_size, samples_per_class, **storage_arguments)

    @classmethod
    def own_arguments(cls, opt: argparse.Namespace,
                      super_labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
        return dict(super().own_arguments(opt, super_labels), softened=opt.data_gc_softened)

    def check_arguments(self) -> None:
        self.check_candidates()

    def draw_batch(self, rng: np.random.Generator, storage: np.ndarray) -> np.ndarray:
        candidates = rng.choice(len(storage), size=self.bigbs, replace=False)
        distances = squared_distances(self.project(rng, storage[candidates]))
        score = np.linalg.norm(distances, axis=1)
        picks = []
        # sequential by definition (each pick depends on the previous ones); vectorized inside
        for k in range(self.groups_per_batch):
            if k == 0:
                pick = int(rng.integers(0, len(score)))
            elif self.softened:
                top = np.flatnonzero(score >= np.percentile(score, 97))
                pick = int(top[rng.integers(0, len(top))])
            else:
                pick = int(np.argmax(score))
            picks.append(pick)
            score = np.minimum(score, distances[:, pick])
        return self.fill_groups(rng, candidates[np.asarray(picks)])
