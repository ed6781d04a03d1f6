"""MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check", eq. 1).

For a query with R same-class references: MAP@R = (1/R) * sum_{i<=R} P(i) * rel(i), where
rel(i) says whether the i-th neighbour is relevant and P(i) is the precision among the first i.
"""
from __future__ import annotations

import numpy as np

from . import REGISTRY
from ._base import NeighbourMetric


def _within_r(relevance: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """Relevance restricted to the first R neighbours of each query (R varies per query)."""
    relevance = relevance[:, : max_relevant(num_relevant)]
    ranks = np.arange(relevance.shape[1])
    return relevance & (ranks[None, :] < num_relevant[:, None])


def max_relevant(num_relevant: np.ndarray) -> int:
    return int(num_relevant.max()) if num_relevant.size else 0


@REGISTRY.register("map@r")
class MAPatR(NeighbourMetric):
    def neighbours_needed(self, num_relevant: np.ndarray) -> int:
        return max_relevant(num_relevant)

    def per_query(self, relevance: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
        hits = _within_r(relevance, num_relevant)
        precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
        summed = np.where(hits, precision_at_i, 0.0).sum(axis=1)
        return summed / np.maximum(num_relevant, 1)
