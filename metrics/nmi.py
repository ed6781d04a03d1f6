"""NMI: normalized mutual information between class labels and k-means cluster ids
(scikit-learn, arithmetic normalization, as in Revisiting-DML)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from . import REGISTRY
from ._base import COSINE, ClusterMetric


@REGISTRY.register("nmi")
class NMI(ClusterMetric):
    def score(self, labels: np.ndarray, cluster_ids: np.ndarray) -> float:
        return float(normalized_mutual_info_score(labels, cluster_ids))


@REGISTRY.register("c_nmi")
class CosineNMI(NMI):
    """NMI of the cosine k-means: k-means of the L2-normalized embeddings, each sample assigned to
    the normalized centroid of highest cosine similarity (as Revisiting-DML's ``c_nmi``)."""

    space = COSINE
