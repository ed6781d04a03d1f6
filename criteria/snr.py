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
from ._functional import (full_precision, pairwise_distances,
                          triplet_stats)


def snr_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """SNR distance matrix var(x_j - x_i) / var(x_i) (unbiased variances over the dimensions),
    from the pairwise squared distances and row sums rather than a B x B x D difference tensor:
    (D - 1) var(x_i - x_j) = |x_i - x_j|^2 - (s_i - s_j)^2 / D, s the row sums."""
    dim = embeddings.shape[1]
    sums = embeddings.sum(dim=1)
    squared = pairwise_distances(embeddings, squared=True)
    noise = squared - (sums[:, None] - sums[None, :]).pow(2) / dim
    signal = embeddings.pow(2).sum(dim=1) - sums.pow(2) / dim
    return noise / signal[:, None]


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
        snr = snr_distances(embeddings)
        triplets = self.miner(embeddings, labels, pairwise_distances(embeddings.detach()))
        anchors, positives, negatives = triplets.unbind(dim=1)
        count = max(len(triplets), 1)
        losses = F.relu(snr[anchors, positives] - snr[anchors, negatives] + self.margin)
        regularizer = embeddings.sum(dim=1)[anchors].abs().sum() / count
        self.stats = triplet_stats(triplets, num_real, self.miner)
        active = (losses > 0).sum().clamp_min(1)
        return losses.sum() / active + self.reg_lambda * regularizer
