"""``contrastive``: contrastive loss on the pairs of mined triplets (Hadsell et al. 2006)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from utilities.options import Option, non_negative_float

from batchminer._base import TRIPLETS

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import full_precision, mine_triplets, triplet_stats


def pair_distances(embeddings: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                   detach_second: bool, eps: float = 1e-6) -> torch.Tensor:
    """|x_first - x_second + eps| per pair (``nn.PairwiseDistance``'s form, which the published
    loss calls), from row differences, the second row detached when asked (stop-gradient)."""
    other = embeddings[second]
    return (embeddings[first] - (other.detach() if detach_second else other) + eps).norm(dim=1)


@REGISTRY.register("contrastive")
class ContrastiveCriterion(BaseCriterion):
    """Each mined triplet (a, p, n) gives a positive pair (a, p) and a negative pair (a, n):
    mean relu(d(a,p) - pos_margin) + mean relu(neg_margin - d(a,n)), with the published
    d(x, y) = |x - y + 1e-6| (``nn.PairwiseDistance``'s eps; Euclidean, not squared).
    ``stop_pos`` / ``stop_neg`` (published options ``--loss_contrastive_stop_pos/neg``): no
    gradient through the positive / negative row of each pair."""

    requires_miner = True
    miner_output = TRIPLETS
    requires_normalized = True

    options = (
        Option("--loss_contrastive_pos_margin", default=0, type=non_negative_float),
        Option("--loss_contrastive_neg_margin", default=1, type=non_negative_float),
        Option("--loss_contrastive_stop_pos", action="store_true",
               help="contrastive: no gradient through the positive of each pair (published "
                    "option)."),
        Option("--loss_contrastive_stop_neg", action="store_true",
               help="contrastive: no gradient through the negative of each pair (published "
                    "option)."),
    )

    def __init__(self, miner, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 stop_pos: bool = False, stop_neg: bool = False) -> None:
        super().__init__()
        self.miner = miner
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.stop_pos = stop_pos
        self.stop_neg = stop_neg

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "ContrastiveCriterion":
        return cls(miner, opt.loss_contrastive_pos_margin, opt.loss_contrastive_neg_margin,
                   opt.loss_contrastive_stop_pos, opt.loss_contrastive_stop_neg)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        count = max(len(triplets), 1)
        d_ap = pair_distances(embeddings, anchors, positives, self.stop_pos)
        d_an = pair_distances(embeddings, anchors, negatives, self.stop_neg)
        pos_loss = F.relu(d_ap - self.pos_margin).sum() / count
        neg_loss = F.relu(self.neg_margin - d_an).sum() / count
        self.stats = triplet_stats(triplets, num_real, self.miner)
        return pos_loss + neg_loss
