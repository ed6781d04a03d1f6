"""``triplet``: triplet margin loss on mined triplets (Schroff et al. 2015)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import TRIPLET_MINERS, full_precision, mine_triplets, triplet_stats


@REGISTRY.register("triplet")
class TripletCriterion(BaseCriterion):
    """mean over mined triplets of relu(d(a,p) - d(a,n) + margin), Euclidean d; zero triplets
    count in the mean (as in Revisiting-DML; pytorch-metric-learning's default averages the
    non-zero ones only)."""

    requires_miner = True
    accepted_miners = TRIPLET_MINERS
    requires_normalized = True

    def __init__(self, miner, margin: float = 0.2) -> None:
        super().__init__()
        self.miner = miner
        self.margin = margin

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "TripletCriterion":
        return cls(miner, opt.loss_triplet_margin)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        distances, triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        losses = F.relu(distances[anchors, positives] - distances[anchors, negatives] + self.margin)
        self.stats = triplet_stats(triplets, num_real, self.miner)
        self.stats["active_fraction"] = ((losses > 0).float().sum()
                                         / max(len(losses), 1)).detach()
        return losses.sum() / max(len(losses), 1)
