"""``d2_coreset``: class groups anchored at a D^2-weighted random coreset of a random big batch.

Published semantics (``datasampler/d2_coreset_sampler.py``): draw ``--data_batchmatch_bigbs``
candidates from the storage without replacement (optionally projected to
``--data_sampler_lowproj_dim``); fit a Gaussian (mean, unbiased covariance) to them. The first
anchor is the candidate nearest to a point drawn from that Gaussian; every further anchor is drawn
among the remaining candidates with probability proportional to
``pdf(x) * (sum of squared distances to the anchors so far) ** --data_d2_coreset_lambda``.
bs / samples_per_class anchors; each is completed by samples_per_class - 1 images of its class
drawn uniformly with replacement.

The Gaussian density is evaluated as a log-density (``scipy.stats.multivariate_normal.logpdf``,
singular covariances allowed) and exponentiated after subtracting its maximum: the normalisation
cancels, and the published ``pdf`` underflows to 0 in 128+ dimensions.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

import numpy as np
from scipy.stats import multivariate_normal

from utilities.options import Option, non_negative_float

from . import REGISTRY
from ._storage import StorageBatchSampler, squared_distances


@REGISTRY.register("d2_coreset")
class D2CoresetSampler(StorageBatchSampler):
    options = StorageBatchSampler.options + (
        Option("--data_d2_coreset_lambda", default=1, type=non_negative_float,
               help="d2_coreset: exponent on the distance weights."),
    )

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, *,
                 d2_lambda: float = 1.0, **storage_arguments) -> None:
        """``storage_arguments``: the keywords of StorageBatchSampler (seed, rank, bigbs, ...)."""
        self.d2_lambda = d2_lambda
        super().__init__(labels, batch_size, samples_per_class, **storage_arguments)

    @classmethod
    def own_arguments(cls, opt: argparse.Namespace,
                      super_labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
        return dict(super().own_arguments(opt, super_labels),
                    d2_lambda=opt.data_d2_coreset_lambda)

    def check_arguments(self) -> None:
        self.check_candidates()
        if self.bigbs < 2:
            raise ValueError(f"--data_batchmatch_bigbs {self.bigbs}: d2_coreset fits a Gaussian "
                             f"to its candidates and needs at least 2")

    def draw_batch(self, rng: np.random.Generator, storage: np.ndarray) -> np.ndarray:
        candidates = rng.choice(len(storage), size=self.bigbs, replace=False)
        points = self.project(rng, storage[candidates])
        mean, cov = points.mean(axis=0), np.atleast_2d(np.cov(points.T))
        distances = squared_distances(points)
        start_point = rng.multivariate_normal(mean, cov)
        first = int(np.argmin(np.linalg.norm(points - start_point, axis=1)))
        log_density = multivariate_normal.logpdf(points, mean, cov, allow_singular=True)
        density = np.exp(log_density - log_density.max())
        remaining = np.ones(len(points), dtype=bool)
        remaining[first] = False
        picks, weights = [first], distances[:, first].copy()
        for _ in range(1, self.groups_per_batch):  # sequential: each draw reweights the next
            open_rows = np.flatnonzero(remaining)
            p = density[open_rows] * weights[open_rows] ** self.d2_lambda
            total = p.sum()
            # all remaining candidates coincide with the anchors: any of them is as good
            p = p / total if total > 0 else np.full(len(open_rows), 1.0 / len(open_rows))
            pick = int(open_rows[rng.choice(len(open_rows), p=p)])
            remaining[pick] = False
            picks.append(pick)
            weights += distances[:, pick]
        return self.fill_groups(rng, candidates[np.asarray(picks)])
