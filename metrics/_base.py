"""Base classes of the evaluation metrics.

A metric declares what it needs (``requires``) so that :mod:`evaluation` computes each shared
ingredient once: one k-nearest-neighbour search serves every retrieval metric, one k-means
serves every clustering metric, and neither runs when no metric asks for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

NEIGHBOURS = "neighbours"
CLUSTERS = "clusters"
SPECTRUM = "spectrum"
CLASS_DIRECTIONS = "class_directions"

# The space a retrieval or clustering metric works in: Euclidean distances of the embeddings as
# they are, or cosine similarity (the embeddings L2-normalized first; Revisiting-DML's "c_" names).
EUCLIDEAN = "euclidean"
COSINE = "cosine"


class BaseMetric:
    """One named figure; ``name`` is the string asked for, e.g. ``recall@10``.

    ``scalar`` is False for a metric whose value is an array (``rho_spectrum@0``: the normalized
    singular-value spectrum), which is logged as a TensorBoard histogram instead of a figure.
    """

    requires: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""
    space: ClassVar[str] = EUCLIDEAN
    scalar: bool = True

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


class SpectrumMetric(BaseMetric):
    """A metric of the singular values of the (N, D) embedding matrix, largest first."""

    requires = SPECTRUM

    def score(self, singular_values: np.ndarray) -> Union[float, np.ndarray]:
        raise NotImplementedError


class ClassDirectionMetric(BaseMetric):
    """A metric of per-class sums of the embeddings' directions (see :class:`ClassDirections`)."""

    requires = CLASS_DIRECTIONS

    def score(self, classes: "ClassDirections") -> float:
        raise NotImplementedError


@dataclass
class ClassDirections:
    """Per-class sums from which mean cosine distances follow without any pairwise matrix.

    ``counts`` (C,): samples per class; ``unit_sums`` (C, D): sum of the class's L2-normalized
    embeddings; ``unit_squares`` (C,): sum of their squared norms (the class size, less its
    all-zero embeddings, which have no direction); ``mean_directions`` (C, D): the class's mean
    embedding, L2-normalized.
    """

    counts: np.ndarray
    unit_sums: np.ndarray
    unit_squares: np.ndarray
    mean_directions: np.ndarray
