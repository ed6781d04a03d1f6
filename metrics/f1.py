"""F1: the pairwise F-measure of a clustering (Song et al. 2017, as in Revisiting-DML).

Over all unordered sample pairs, a pair is a true positive when both samples share a cluster and
a class; precision = TP / pairs sharing a cluster, recall = TP / pairs sharing a class. The pair
counts come from scikit-learn's sparse contingency table, so nothing of size N x N is built.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics.cluster import pair_confusion_matrix

from . import REGISTRY
from ._base import COSINE, ClusterMetric


@REGISTRY.register("f1")
class F1(ClusterMetric):
    def score(self, labels: np.ndarray, cluster_ids: np.ndarray) -> float:
        # Ordered-pair counts: [[TN, FP], [FN, TP]] with "positive" = same cluster.
        (_, false_pos), (false_neg, true_pos) = pair_confusion_matrix(labels, cluster_ids)
        denominator = 2 * int(true_pos) + int(false_pos) + int(false_neg)
        if denominator == 0:  # every class and every cluster is a singleton: full agreement
            return 1.0
        return 2.0 * int(true_pos) / denominator


@REGISTRY.register("c_f1")
class CosineF1(F1):
    """F1 of the cosine k-means (see ``c_nmi``)."""

    space = COSINE
