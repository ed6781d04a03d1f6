"""NMI: normalized mutual information between class labels and k-means cluster ids
(scikit-learn, arithmetic normalization, as in Revisiting-DML)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from . import REGISTRY
from ._base import ClusterMetric


@REGISTRY.register("nmi")
class NMI(ClusterMetric):
    def score(self, labels: np.ndarray, cluster_ids: np.ndarray) -> float:
        return float(normalized_mutual_info_score(labels, cluster_ids))
