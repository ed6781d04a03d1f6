"""``contrastive``: contrastive loss on the pairs of mined triplets (Hadsell et al. 2006)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import TRIPLET_MINERS, full_precision, mine_triplets, triplet_stats


@REGISTRY.register("contrastive")
class ContrastiveCriterion(BaseCriterion):
    """Each mined triplet (a, p, n) gives a positive pair (a, p) and a negative pair (a, n):
    mean relu(d(a,p) - pos_margin) + mean relu(neg_margin - d(a,n)), Euclidean d (not squared)."""

    requires_miner = True
    accepted_miners = TRIPLET_MINERS
    requires_normalized = True

    def __init__(self, miner, pos_margin: float = 0.0, neg_margin: float = 1.0) -> None:
        super().__init__()
        self.miner = miner
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "ContrastiveCriterion":
        return cls(miner, opt.loss_contrastive_pos_margin, opt.loss_contrastive_neg_margin)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        distances, triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        count = max(len(triplets), 1)
        pos_loss = F.relu(distances[anchors, positives] - self.pos_margin).sum() / count
        neg_loss = F.relu(self.neg_margin - distances[anchors, negatives]).sum() / count
        self.stats = triplet_stats(triplets, num_real, self.miner)
        return pos_loss + neg_loss
