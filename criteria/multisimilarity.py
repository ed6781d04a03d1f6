"""``multisimilarity``: Multi-Similarity loss with its own pair mining (Wang et al. 2019)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from utilities.options import Option, between, non_negative_float, positive_float

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import (full_precision, gram, label_masks, masked_log1p_sum_exp,
                          mean_over, pair_stats)


@REGISTRY.register("multisimilarity")
class MultiSimilarityCriterion(BaseCriterion):
    """Multi-Similarity loss on cosine similarities S (embeddings L2-normalized).

    Pair mining (eq. 6-7 of the paper): for anchor i, a negative j is kept if
    S_ij + margin > min_{positives k} S_ik, a positive if S_ij - margin < max_{negatives k} S_ik.
    Per anchor with at least one kept positive and one kept negative:
        1/alpha log(1 + sum_P exp(-alpha (S - thresh)))
        + 1/beta log(1 + sum_N exp(beta (S - thresh)))
    averaged over those anchors (anchors with an empty side are skipped, as in the Revisiting-DML
    loop; pytorch-metric-learning instead adds the non-empty side and averages over all anchors).
    """

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_multisimilarity_pos_weight", default=2, type=positive_float),
        Option("--loss_multisimilarity_neg_weight", default=40, type=positive_float),
        Option("--loss_multisimilarity_margin", default=0.1, type=non_negative_float),
        Option("--loss_multisimilarity_thresh", default=0.5, type=between(-1.0, 1.0)),
    )

    def __init__(self, pos_weight: float = 2.0, neg_weight: float = 40.0, margin: float = 0.1,
                 thresh: float = 0.5) -> None:
        super().__init__()
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.margin = margin
        self.thresh = thresh

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "MultiSimilarityCriterion":
        return cls(opt.loss_multisimilarity_pos_weight, opt.loss_multisimilarity_neg_weight,
                   opt.loss_multisimilarity_margin, opt.loss_multisimilarity_thresh)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        similarity = gram(embeddings)
        positives, negatives = label_masks(labels)
        detached = similarity.detach()
        hardest_positive = detached.masked_fill(~positives, float("inf")).amin(dim=1, keepdim=True)
        hardest_negative = detached.masked_fill(~negatives, float("-inf")).amax(dim=1, keepdim=True)
        kept_negatives = negatives & (detached + self.margin > hardest_positive)
        kept_positives = positives & (detached - self.margin < hardest_negative)
        valid = kept_positives.any(dim=1) & kept_negatives.any(dim=1)

        pos_term = masked_log1p_sum_exp(-self.pos_weight * (similarity - self.thresh),
                                        kept_positives) / self.pos_weight
        neg_term = masked_log1p_sum_exp(self.neg_weight * (similarity - self.thresh),
                                        kept_negatives) / self.neg_weight
        self.stats = pair_stats((kept_positives | kept_negatives) & valid[:, None], num_real)
        self.stats["valid_anchors"] = valid.sum().detach()
        return mean_over(pos_term + neg_term, valid)
