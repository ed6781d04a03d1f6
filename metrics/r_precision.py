"""R-precision (Musgrave et al. 2020): the share of relevant samples among a query's first R
neighbours, R being the number of references that share the query's label."""
from __future__ import annotations

import numpy as np

from . import REGISTRY
from ._base import NeighbourMetric
from .map_at_r import _within_r, max_relevant


@REGISTRY.register("r_precision")
class RPrecision(NeighbourMetric):
    def neighbours_needed(self, num_relevant: np.ndarray) -> int:
        return max_relevant(num_relevant)

    def per_query(self, relevance: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
        hits = _within_r(relevance, num_relevant).sum(axis=1)
        return hits / np.maximum(num_relevant, 1)
