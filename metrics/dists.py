"""Embedding-space distance ratios of Revisiting-DML (Roth et al. 2020), as in the DAS code:
``dists@intra``, ``dists@inter``, ``dists@intra_over_inter``. All use cosine distance
(1 - cosine similarity), so they do not depend on the embeddings' norms.

- ``dists@intra``: per class, the mean cosine distance over ordered pairs of distinct members;
  then the mean over classes. A class of one sample has no pair: it takes the largest value of
  the other classes (the published code's intent; its indexing picks the first two classes'
  values instead).
- ``dists@inter``: the mean cosine distance over ordered pairs of distinct classes' mean
  embeddings (means of the raw embeddings).
- ``dists@intra_over_inter``: their ratio (denominator clipped at 1e-8).

Both means follow from per-class sums (sum over i != j of u_i . u_j = |sum u|^2 - sum |u|^2), so
no pairwise matrix is built, not even the C x C one of class means (SOP: 11,316 classes).
"""
from __future__ import annotations

import warnings

import numpy as np

from . import REGISTRY
from ._base import ClassDirectionMetric, ClassDirections


def mean_intra_class_distance(classes: ClassDirections) -> float:
    pairs = classes.counts * (classes.counts - 1.0)
    similarity_sums = np.einsum("cd,cd->c", classes.unit_sums, classes.unit_sums) - \
        classes.unit_squares
    defined = pairs > 0
    if not defined.any():
        warnings.warn("dists@intra: every class has a single sample; no intra-class distance")
        return float("nan")
    per_class = 1.0 - similarity_sums[defined] / pairs[defined]
    filled = np.full(len(pairs), per_class.max())
    filled[defined] = per_class
    return float(filled.mean())


def mean_inter_class_distance(classes: ClassDirections) -> float:
    directions = classes.mean_directions
    num_classes = len(directions)
    if num_classes < 2:
        warnings.warn("dists@inter: a single class; no inter-class distance")
        return float("nan")
    total = directions.sum(axis=0)
    similarity_sum = total @ total - np.einsum("cd,cd->", directions, directions)
    return float(1.0 - similarity_sum / (num_classes * (num_classes - 1.0)))


@REGISTRY.register("dists@intra")
class IntraClassDistance(ClassDirectionMetric):
    def score(self, classes: ClassDirections) -> float:
        return mean_intra_class_distance(classes)


@REGISTRY.register("dists@inter")
class InterClassDistance(ClassDirectionMetric):
    def score(self, classes: ClassDirections) -> float:
        return mean_inter_class_distance(classes)


@REGISTRY.register("dists@intra_over_inter")
class IntraOverInter(ClassDirectionMetric):
    def score(self, classes: ClassDirections) -> float:
        return mean_intra_class_distance(classes) / max(mean_inter_class_distance(classes), 1e-8)
