"""``quadruplet``: quadruplet loss (Chen et al. 2017, "Beyond triplet loss")."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from utilities.options import Option, non_negative_float
from batchminer._base import TRIPLETS
from batchminer._functional import random_choice

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import (full_precision, mean_over, mine_triplets,
                          triplet_stats)


@REGISTRY.register("quadruplet")
class QuadrupletCriterion(BaseCriterion):
    """mean relu(d(a,p) - d(a,n) + alpha_1) + mean relu(d(a,p) - d(n,m) + alpha_2) over the
    mined triplets (a, p, n), each with a fourth row m (the second mean over the triplets that
    found one).

    Default (published): m is the row whose *index* k is drawn uniformly among the triplet
    indices k whose negative index differs from this triplet's (the published code reads triplet
    indices as batch rows; m may share a's or n's class). ``fourth_by_class=True``
    (``--loss_quadruplet_fourth_by_class``): m drawn uniformly among the rows whose class differs
    from both a's and n's, the paper's definition (the pair (n, m) is then a negative pair)."""

    requires_miner = True
    miner_output = TRIPLETS
    requires_normalized = True

    options = (
        Option("--loss_quadruplet_margin_alpha_1", default=0.2, type=non_negative_float),
        Option("--loss_quadruplet_margin_alpha_2", default=0.2, type=non_negative_float),
        Option("--loss_quadruplet_fourth_by_class", action="store_true",
               help="quadruplet: draw the fourth row among rows of a third class (the paper) "
                    "instead of the published draw by triplet index. See docs/PARITY.md."),
    )

    def __init__(self, miner, margin_alpha_1: float = 0.2, margin_alpha_2: float = 0.2,
                 fourth_by_class: bool = False) -> None:
        super().__init__()
        self.fourth_by_class = fourth_by_class
        self.miner = miner
        self.margin_alpha_1 = margin_alpha_1
        self.margin_alpha_2 = margin_alpha_2

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "QuadrupletCriterion":
        return cls(miner, opt.loss_quadruplet_margin_alpha_1, opt.loss_quadruplet_margin_alpha_2,
                   opt.loss_quadruplet_fourth_by_class)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        distances, triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        if self.fourth_by_class:
            candidates = ((labels[None, :] != labels[anchors][:, None])
                          & (labels[None, :] != labels[negatives][:, None]))
        else:  # triplet index k as a batch row, where triplet k's negative differs
            rows = min(len(triplets), len(labels))
            candidates = negatives[None, :rows] != negatives[:, None]
        fourth, found = random_choice(candidates)
        d_ap = distances[anchors, positives]
        triplet_loss = F.relu(d_ap - distances[anchors, negatives] + self.margin_alpha_1)
        quadruplet_loss = F.relu(d_ap - distances[negatives, fourth] + self.margin_alpha_2)
        self.stats = triplet_stats(torch.cat([triplets, fourth[:, None]], dim=1), num_real,
                                   self.miner)
        return (triplet_loss.sum() / max(len(triplets), 1)
                + mean_over(quadruplet_loss, found))
