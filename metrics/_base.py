"""Base classes of the evaluation metrics.

A metric declares what it needs (``requires``) so that :mod:`evaluation` computes each shared
ingredient once: one k-nearest-neighbour search serves every retrieval metric, one k-means
serves every clustering metric, and neither runs when no metric asks for it.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

NEIGHBOURS = "neighbours"
CLUSTERS = "clusters"


class BaseMetric:
    """One named figure in [0, 1]; ``name`` is the string asked for, e.g. ``recall@10``."""

    requires: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_name(cls, name: str) -> "BaseMetric":
        """Build the metric from its command-line name (parametrized names parse their argument)."""
        return cls(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class NeighbourMetric(BaseMetric):
    """A retrieval metric averaged over queries, computed from the ranked neighbour list.

    The evaluation hands it, chunk by chunk, ``relevance``: a (queries, k) boolean array whose
    entry (i, j) says whether the j-th nearest reference of query i (the query itself excluded)
    has the query's label, and ``num_relevant``: the number R of references sharing the query's
    label. Queries with R = 0 ("lone" queries) are left out of every average, as in
    pytorch-metric-learning's AccuracyCalculator.
    """

    requires = NEIGHBOURS
    # True when a query's value is settled by its first relevant neighbour (Recall@K): queries
    # with a hit among a short neighbour list then need no deeper search (see evaluation).
    settled_by_first_hit: ClassVar[bool] = False

    def neighbours_needed(self, num_relevant: np.ndarray) -> int:
        """How many ranked neighbours per query this metric reads."""
        raise NotImplementedError

    def per_query(self, relevance: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
        """The metric's value for each query of a chunk, as float64 (queries,)."""
        raise NotImplementedError


class ClusterMetric(BaseMetric):
    """A metric comparing a clustering of the embeddings with the class labels."""

    requires = CLUSTERS

    def score(self, labels: np.ndarray, cluster_ids: np.ndarray) -> float:
        raise NotImplementedError
