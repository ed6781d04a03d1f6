"""The mean-average-precision family of Revisiting-DML and DAS: ``mAP``, ``mAP_c``, ``mAP_1000``,
``mAP_lim`` and their cosine-similarity versions ``c_mAP_c``, ``c_mAP_1000``, ``c_mAP_lim``.

For a query whose class has ``n`` members counting the query itself (``n = R + 1``, R being its
same-class references), each reads the first ``L`` ranked neighbours (the query excluded) and
gives ``(1/n) * sum_{i<=L} P(i) * rel(i)``, P(i) being the precision among the first i:

- ``mAP``: L = every reference (the full ranking);
- ``mAP_c``: L = n, the class size ("c");
- ``mAP_1000``: L = 1000;
- ``mAP_lim``: L = 1023 (the published code's allowance for faiss's GPU limit on k).

L is capped by the number of references. Dividing by n rather than R (MAP@R divides by R and
reads R neighbours) is the published definition, so a perfect ranking scores R / (R + 1).
``map@r`` (Musgrave et al. 2020) is the normalized figure.
"""
from __future__ import annotations

import numpy as np

from . import REGISTRY
from ._base import COSINE, NeighbourMetric

# neighbours_needed of the full-ranking mAP; the evaluation caps it at the number of references.
FULL_RANKING = np.iinfo(np.int64).max


def summed_precision(relevance: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """sum_{i <= depth} P(i) * rel(i) per query of a (queries, k) relevance array, depth (queries,)
    capped at k. Works on the hits' positions only (at most k of them per query), so it costs
    no (queries, k) float arrays even for the full ranking."""
    rows, columns = np.nonzero(relevance)  # row-major: each row's hits in rank order
    keep = columns < depth[rows]
    rows, columns = rows[keep], columns[keep]
    first_of_row = np.searchsorted(rows, np.arange(len(relevance)))
    hit_number = np.arange(len(rows)) - first_of_row[rows] + 1  # j for the j-th hit of its row
    return np.bincount(rows, weights=hit_number / (columns + 1), minlength=len(relevance))


class PublishedAveragePrecision(NeighbourMetric):
    """Base of the family: ``depth`` says how many ranked neighbours a query reads."""

    def depth(self, num_relevant: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def neighbours_needed(self, num_relevant: np.ndarray) -> int:
        return int(self.depth(num_relevant).max()) if num_relevant.size else 0

    def per_query(self, relevance: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
        depth = np.minimum(self.depth(num_relevant), relevance.shape[1])
        return summed_precision(relevance, depth) / (num_relevant + 1)


class FixedDepth(PublishedAveragePrecision):
    length: int = FULL_RANKING

    def depth(self, num_relevant: np.ndarray) -> np.ndarray:
        return np.full(len(num_relevant), self.length, dtype=np.int64)


@REGISTRY.register("mAP")
class MAP(FixedDepth):
    """Over the full ranking (every reference is read: the costliest retrieval metric)."""


@REGISTRY.register("mAP_1000")
class MAP1000(FixedDepth):
    length = 1000


@REGISTRY.register("mAP_lim")
class MAPLim(FixedDepth):
    length = 1023


@REGISTRY.register("mAP_c")
class MAPc(PublishedAveragePrecision):
    def depth(self, num_relevant: np.ndarray) -> np.ndarray:
        return np.asarray(num_relevant, dtype=np.int64) + 1


@REGISTRY.register("c_mAP_c")
class CosineMAPc(MAPc):
    space = COSINE


@REGISTRY.register("c_mAP_1000")
class CosineMAP1000(MAP1000):
    space = COSINE


@REGISTRY.register("c_mAP_lim")
class CosineMAPLim(MAPLim):
    space = COSINE
