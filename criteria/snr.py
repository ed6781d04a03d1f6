"""``snr``: triplet loss on the signal-to-noise-ratio distance (Yuan et al. 2019)."""
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


def snr_distances(embeddings: torch.Tensor, anchors: torch.Tensor,
                  others: torch.Tensor) -> torch.Tensor:
    """SNR distance var(x_other - x_anchor) / var(x_anchor) per pair (unbiased variances over the
    dimensions), from row differences as published (a distance matrix would lose the digits of
    near-duplicate rows)."""
    return (row_differences(embeddings, others, anchors).var(dim=1)
            / embeddings[anchors].var(dim=1))


@REGISTRY.register("snr")
class SNRCriterion(BaseCriterion):
    """sum over mined triplets of relu(SNR(a,p) - SNR(a,n) + margin) / #non-zero terms (1 when
    none), as published, + ``reg_lambda`` x mean over the triplets' anchors of |sum of the
    anchor's entries| (the regularizer keeps embeddings zero-mean, which the SNR distance
    assumes; the published code sets reg_lambda to 0 with the ``distance`` miner, and so does
    ``from_options``)."""

    requires_miner = True
    miner_output = TRIPLETS
    requires_normalized = True

    options = (
        Option("--loss_snr_margin", default=0.2, type=non_negative_float),
        Option("--loss_snr_reg_lambda", default=0.005, type=non_negative_float),
    )

    def __init__(self, miner, margin: float = 0.2, reg_lambda: float = 0.005) -> None:
        super().__init__()
        self.miner = miner
        self.margin = margin
        self.reg_lambda = reg_lambda

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "SNRCriterion":
        reg_lambda = 0.0 if opt.batch_mining == "distance" else opt.loss_snr_reg_lambda
        return cls(miner, opt.loss_snr_margin, reg_lambda)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        count = max(len(triplets), 1)
        losses = F.relu(snr_distances(embeddings, anchors, positives)
                        - snr_distances(embeddings, anchors, negatives) + self.margin)
        regularizer = embeddings.sum(dim=1)[anchors].abs().sum() / count
        self.stats = triplet_stats(triplets, num_real, self.miner)
        active = (losses > 0).sum().clamp_min(1)
        return losses.sum() / active + self.reg_lambda * regularizer
