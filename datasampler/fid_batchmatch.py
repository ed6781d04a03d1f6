"""``fid_batchmatch``: of ``--data_batchmatch_ncomps`` candidate batches drawn from a
class-balanced big batch, keep the one of least Frechet distance to the big batch.

Published semantics (``datasampler/fid_batchmatch_sampler.py``): big batch and candidates as in
``disthist_batchmatch``; each is summarised by its mean and unbiased covariance, and the cost is
``||mu_b - mu_c||^2 + tr C_b + tr C_c - 2 tr sqrtm((C_b + 1e-8 I)(C_c + 1e-8 I))`` (real part of
``scipy.linalg.sqrtm``). The candidate of least cost is the batch. (The published ``select``
names an unimported module for this sampler, so it cannot be selected there; this is the
sampler file's semantics.)
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import sqrtm

from . import REGISTRY
from ._storage import StorageBatchSampler

DIAGONAL_OFFSET = 1e-8


@REGISTRY.register("fid_batchmatch")
class FidBatchMatchSampler(StorageBatchSampler):
    def check_arguments(self) -> None:
        self.check_big_batch()
        if self.bigbs // self.samples_per_class * self.samples_per_class < 2 or self.batch_size < 2:
            raise ValueError("fid_batchmatch needs at least 2 images in the big batch and in a "
                             "batch to estimate covariances")

    def draw_batch(self, rng: np.random.Generator, storage: np.ndarray) -> np.ndarray:
        big = self.class_balanced_bigbatch(rng).reshape(-1)
        points = self.project(rng, storage[big])
        subsets = self.candidate_subsets(rng, big.reshape(-1, self.samples_per_class))
        big_mean, big_cov = points.mean(axis=0), np.atleast_2d(np.cov(points.T))
        chosen = points[subsets]  # (ncomps, bs, dim)
        means = chosen.mean(axis=1)
        centred = chosen - means[:, None]
        covs = np.einsum("cni,cnj->cij", centred, centred) / (self.batch_size - 1)
        offset = np.eye(points.shape[1]) * DIAGONAL_OFFSET
        products = (big_cov + offset)[None] @ (covs + offset)
        # scipy's sqrtm takes one matrix: a loop over the ncomps candidates, not over samples
        trace_sqrt = np.array([np.trace(sqrtm(product).real) for product in products])
        cost = (((big_mean[None] - means) ** 2).sum(axis=1) + np.trace(big_cov)
                + np.trace(covs, axis1=1, axis2=2) - 2 * trace_sqrt)
        return big[subsets[int(np.argmin(cost))]]
