"""``lifted``: generalized lifted structure loss (Hermans et al. 2017, after Song et al. 2016)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import (anchored_pair_stats, full_precision, masked_log_sum_exp,
                          mean_norm, miner_stats, pairwise_distances)


@REGISTRY.register("lifted")
class LiftedCriterion(BaseCriterion):
    """Per anchor: relu(logsumexp_P d(a,p) + logsumexp_N (neg_margin - d(a,n))), averaged over
    anchors, plus ``l2_weight`` x the mean embedding norm (embeddings are not normalized)."""

    requires_miner = True
    accepted_miners = ("lifted",)
    requires_normalized = False

    def __init__(self, miner, neg_margin: float = 1.0, l2_weight: float = 0.005) -> None:
        super().__init__()
        self.miner = miner
        self.neg_margin = neg_margin
        self.l2_weight = l2_weight

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "LiftedCriterion":
        return cls(miner, opt.loss_lifted_neg_margin, opt.loss_lifted_l2)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        distances = pairwise_distances(embeddings)
        anchors, positives, negatives = self.miner(embeddings, labels, distances.detach())
        anchor_distances = distances[anchors]
        pos_term = masked_log_sum_exp(anchor_distances, positives)
        neg_term = masked_log_sum_exp(self.neg_margin - anchor_distances, negatives)
        losses = F.relu(pos_term + neg_term)
        self.stats = anchored_pair_stats(anchors, positives | negatives, num_real)
        self.stats.update(miner_stats(self.miner))
        return losses.sum() / max(len(losses), 1) + self.l2_weight * mean_norm(embeddings)
