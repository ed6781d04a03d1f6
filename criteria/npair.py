"""``npair``: N-pair loss (Sohn 2016) with every other-class row as a negative."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from utilities.options import Option, non_negative_float, positive_float

from batchminer._base import NPAIR_TUPLES

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import (anchored_pair_stats, full_precision, gram,
                          masked_log1p_sum_exp, mean_norm, miner_stats)


def npair_terms(embeddings: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
                negatives: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_n exp(a.n - a.p)) per anchor (one matrix product for the whole batch)."""
    anchor_products = gram(embeddings)[anchors]
    positive_products = anchor_products.gather(1, positives[:, None])
    return masked_log1p_sum_exp(anchor_products - positive_products, negatives)


@REGISTRY.register("npair")
class NPairCriterion(BaseCriterion):
    """mean over anchors of log(1 + sum_{n in N(a)} exp(a.n - a.p)) + ``l2_weight`` x the mean
    embedding norm; one positive per anchor and all other-class rows as negatives (``npair``
    miner). Inner products of unnormalized embeddings, as in Sohn 2016.

    ``divisor``: the embeddings are divided by it first (inner products by its square, the norm
    term by it). The runnable published module divides by 4 for BN-Inception only ("to avoid
    initial overflow"); the last released one always divides by 4 but cannot run (its flag and
    constructor names do not match the loss registry). ``--loss_npair_divisor`` (default: 4 for
    a bninception arch, else 1) picks; see docs/PARITY.md.
    """

    requires_miner = True
    miner_output = NPAIR_TUPLES
    requires_normalized = False

    options = (
        Option("--loss_npair_l2", default=0.005, type=non_negative_float),
        Option("--loss_npair_divisor", default=None, type=positive_float,
               help="npair: divide the embeddings by this before the loss; default 4 for a "
                    "bninception arch and 1 otherwise, as the runnable published module. See "
                    "docs/PARITY.md."),
    )

    def __init__(self, miner, l2_weight: float = 0.005, divisor: float = 1.0) -> None:
        super().__init__()
        if not divisor > 0:
            raise ValueError(f"--loss_npair_divisor must be positive, got {divisor}")
        self.miner = miner
        self.l2_weight = l2_weight
        self.divisor = divisor

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "NPairCriterion":
        divisor = opt.loss_npair_divisor
        if divisor is None:
            divisor = 4.0 if "bninception" in opt.arch else 1.0
        return cls(miner, opt.loss_npair_l2, divisor)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        anchors, positives, negatives = self.miner(embeddings, labels)
        if self.divisor != 1.0:
            embeddings = embeddings / self.divisor
        losses = npair_terms(embeddings, anchors, positives, negatives)
        used = negatives.clone()
        used[torch.arange(len(anchors), device=used.device), positives] = True
        self.stats = anchored_pair_stats(anchors, used, num_real)
        self.stats.update(miner_stats(self.miner))
        return losses.sum() / max(len(losses), 1) + self.l2_weight * mean_norm(embeddings)
