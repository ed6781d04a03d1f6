"""``disthist_batchmatch``: of ``--data_batchmatch_ncomps`` candidate batches drawn from a
class-balanced big batch, keep the one whose statistics best match the big batch's.

Published semantics (``datasampler/disthist_batchmatch_sampler.py``): a big batch of
``--data_batchmatch_bigbs`` storage embeddings (bigbs / samples_per_class classes drawn with
replacement, samples_per_class images each with replacement; optionally projected). Candidates:
bs / samples_per_class draws of a class present in the big batch, samples_per_class of its
big-batch rows without replacement. Cost of a candidate:
``||mean_big - mean_cand|| + ||std_big - std_cand|| + 75 * 2 * W1(h_big, h_cand)``, where h are
the 50-bin histograms (range: the big batch's smallest to largest distance, normalised to sum 1)
of the pairwise Euclidean distances, and W1 is ``scipy.stats.wasserstein_distance`` applied, as
published, to the two vectors of bin heights as samples (for equal sizes: the mean absolute
difference of the sorted heights). The candidate of least cost is the batch.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist, squareform

from . import REGISTRY
from ._storage import StorageBatchSampler

BINS = 50
HISTOGRAM_WEIGHT = 75.0


@REGISTRY.register("disthist_batchmatch")
class DistHistBatchMatchSampler(StorageBatchSampler):
    def check_arguments(self) -> None:
        self.check_big_batch()

    def draw_batch(self, rng: np.random.Generator, storage: np.ndarray) -> np.ndarray:
        big = self.class_balanced_bigbatch(rng).reshape(-1)
        points = self.project(rng, storage[big])
        subsets = self.candidate_subsets(rng, big.reshape(-1, self.samples_per_class))
        distances = squareform(pdist(points))  # bigbs x bigbs; candidates index into it
        upper = np.triu_indices(len(points), 1)
        edges = np.linspace(distances[upper].min(), distances[upper].max(), BINS + 1)
        big_hist = histograms(distances[upper][None], edges)[0]
        pair_a, pair_b = np.triu_indices(self.batch_size, 1)
        cand_hist = histograms(distances[subsets[:, pair_a], subsets[:, pair_b]], edges)
        wasserstein = np.abs(np.sort(cand_hist, axis=1) - np.sort(big_hist)[None]).mean(axis=1)
        chosen = points[subsets]  # (ncomps, bs, dim)
        cost = (np.linalg.norm(points.mean(axis=0) - chosen.mean(axis=1), axis=1)
                + np.linalg.norm(points.std(axis=0) - chosen.std(axis=1), axis=1)
                + HISTOGRAM_WEIGHT * 2 * wasserstein)
        return big[subsets[int(np.argmin(cost))]]


def histograms(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Row-wise ``np.histogram(row, bins=edges)`` normalised to sum 1: half-open bins, the last
    closed; values outside the edges are not counted (as np.histogram)."""
    bins = len(edges) - 1
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1
    inside = (index >= 0) & (index < bins)
    rows = np.broadcast_to(np.arange(len(values))[:, None], values.shape)
    counts = np.bincount((rows * bins + index)[inside], minlength=len(values) * bins)
    counts = counts.reshape(len(values), bins).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)
