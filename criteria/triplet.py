"""``triplet``: triplet margin loss on mined triplets (Schroff et al. 2015)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from utilities.options import Option, non_negative_float

from batchminer._base import TRIPLETS

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import full_precision, mine_triplets, row_differences, triplet_stats

DISTANCES = ("squared", "plain")


@REGISTRY.register("triplet")
class TripletCriterion(BaseCriterion):
    """mean over mined triplets of relu(d(a,p) - d(a,n) + margin); zero triplets count in the
    mean (as in Revisiting-DML; pytorch-metric-learning's default averages the non-zero ones).

    ``distance='squared'`` (default, the published DAS / Revisiting-DML loss): d = |x - y|^2.
    ``distance='plain'`` (``--loss_triplet_distance plain``): the Euclidean distance |x - y| of
    FaceNet's margin on unnormalized distances, as pytorch-metric-learning's TripletMarginLoss.
    """

    requires_miner = True
    miner_output = TRIPLETS
    requires_normalized = True

    options = (
        Option("--loss_triplet_margin", default=0.2, type=non_negative_float),
        Option("--loss_triplet_distance", default="squared", choices=["squared", "plain"],
               help="triplet: squared Euclidean distances as published (default), or plain "
                    "Euclidean distances. See docs/PARITY.md."),
    )

    def __init__(self, miner, margin: float = 0.2, distance: str = "squared") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"--loss_triplet_distance: expected one of {', '.join(DISTANCES)}, "
                             f"got '{distance}'")
        self.miner = miner
        self.margin = margin
        self.distance = distance

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "TripletCriterion":
        return cls(miner, opt.loss_triplet_margin, opt.loss_triplet_distance)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        to_positive = row_differences(embeddings, anchors, positives)
        to_negative = row_differences(embeddings, anchors, negatives)
        if self.distance == "squared":
            d_ap, d_an = to_positive.pow(2).sum(dim=1), to_negative.pow(2).sum(dim=1)
        else:
            d_ap, d_an = to_positive.norm(dim=1), to_negative.norm(dim=1)
        losses = F.relu(d_ap - d_an + self.margin)
        self.stats = triplet_stats(triplets, num_real, self.miner)
        self.stats["active_fraction"] = ((losses > 0).float().sum()
                                         / max(len(losses), 1)).detach()
        return losses.sum() / max(len(losses), 1)
