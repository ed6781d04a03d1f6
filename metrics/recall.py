"""Recall@K: the share of queries with at least one same-class sample among their K nearest
neighbours (Song et al. 2016, as used by Revisiting-DML). A query never counts itself."""
from __future__ import annotations

import numpy as np

from . import REGISTRY
from ._base import COSINE, NeighbourMetric


@REGISTRY.register("recall@K")
class Recall(NeighbourMetric):
    settled_by_first_hit = True

    def __init__(self, name: str, k: int) -> None:
        super().__init__(name)
        if k < 1:
            raise ValueError(f"metric '{name}': K must be a positive integer, got {k}")
        self.k = k

    @classmethod
    def from_name(cls, name: str) -> "Recall":
        return cls(name, int(name.rsplit("@", 1)[1]))

    def neighbours_needed(self, num_relevant: np.ndarray) -> int:
        return self.k

    def per_query(self, relevance: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
        return relevance[:, : self.k].any(axis=1).astype(np.float64)


@REGISTRY.register("e_recall@K")
class ERecall(Recall):
    """Revisiting-DML's name for Recall@K ("e" for embedding space); same figure."""


@REGISTRY.register("c_recall@K")
class CosineRecall(Recall):
    """Recall@K ranking by cosine similarity (the embeddings L2-normalized first)."""

    space = COSINE
