"""``lifted``: generalized lifted structure loss (Hermans et al. 2017, after Song et al. 2016)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from utilities.options import Option, non_negative_float

from batchminer._base import ANCHOR_SETS

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import (accurate_pairwise_distances, anchored_pair_stats, full_precision,
                          masked_log_sum_exp, mean_norm, miner_stats)


FORMULATIONS = ("published", "corrected")


class _SetSpreads(torch.autograd.Function):
    """s2[a, d] = sum_k w[a, k] (y[a, d] - x[k, d])^2 with y = x[anchors] + eps, by the expansion
    n y^2 - 2 y (w @ x) + w @ x^2 taken in float64, returned in x's dtype; backward in x's dtype
    with the saved float64 w @ x for the anchor side (two products, as autograd's float32
    expansion would need)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, anchors: torch.Tensor, weights: torch.Tensor,
                eps: float) -> torch.Tensor:
        wide, wide_weights = x.double(), weights.double()
        shifted = wide[anchors] + eps
        weighted_sum = wide_weights @ wide
        counts = wide_weights.sum(dim=1, keepdim=True)
        squares = (counts * shifted.pow(2) - 2.0 * shifted * weighted_sum
                   + wide_weights @ wide.pow(2))
        # anchor-side factor n y - w @ x, kept exact for the backward
        ctx.save_for_backward(x, anchors, weights, (counts * shifted - weighted_sum).to(x.dtype))
        ctx.eps = eps
        return squares.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, anchors, weights, anchor_factor = ctx.saved_tensors
        shifted = x[anchors] + ctx.eps
        # d/dx_k: 2 sum_a w[a, k] g[a] (x_k - y_a)
        grad_x = 2.0 * ((weights.T @ grad) * x - weights.T @ (grad * shifted))
        grad_x = grad_x.index_add(0, anchors, 2.0 * grad * anchor_factor)
        return grad_x, None, None, None


def published_lifted_terms(embeddings: torch.Tensor, anchors: torch.Tensor,
                           positives: torch.Tensor, negatives: torch.Tensor, neg_margin: float,
                           eps: float = 1e-6) -> torch.Tensor:
    """relu(pos + neg) per anchor in the published (DAS / Revisiting-DML) formulation.

    The published code applies ``nn.PairwiseDistance`` to the anchor (1, D, 1) and the set (1, D, K)
    so the norm runs over the K set members *per embedding dimension* d:
    ``s[a, d] = sqrt(sum_k (x[a, d] - x[k, d] + eps)^2)``; then ``pos = logsumexp_d s_pos[a, d]``
    and ``neg = logsumexp_d (neg_margin - s_neg[a, d])``. Here the sums over k are matrix products
    with the (A x B) masks: sum_k m_k (y - x_k)^2 = n y^2 - 2 y (m @ x) + m @ x^2, on embeddings
    centred per dimension (differences do not change). For the positives, often near-duplicates
    of the anchor in a DAS batch, the expansion cancels in float32, so it is taken in float64
    (:class:`_SetSpreads`); a negative set is spread around the anchor, and its float32 expansion
    keeps its digits.
    """
    centred = embeddings - embeddings.detach().mean(dim=0, keepdim=True)
    positive_squares = _SetSpreads.apply(centred, anchors, positives.to(centred.dtype), eps)
    shifted = centred[anchors] + eps
    weights = negatives.to(centred.dtype)
    negative_squares = (weights.sum(dim=1, keepdim=True) * shifted.pow(2)
                        - 2.0 * shifted * (weights @ centred) + weights @ centred.pow(2))
    pos_term = torch.logsumexp(positive_squares.clamp_min(1e-12).sqrt(), dim=1)
    neg_term = torch.logsumexp(neg_margin - negative_squares.clamp_min(1e-12).sqrt(), dim=1)
    return F.relu(pos_term + neg_term)


@REGISTRY.register("lifted")
class LiftedCriterion(BaseCriterion):
    """Generalized lifted structure loss, averaged over anchors, plus ``l2_weight`` x the mean
    embedding norm (embeddings are not normalized).

    ``formulation='published'`` (default, what the paper's Lifted rows ran): the published code's
    norm over the wrong axis, see :func:`published_lifted_terms` and docs/PARITY.md.
    ``formulation='corrected'`` (``--loss_lifted_formulation corrected``): per anchor
    relu(logsumexp_P d(a,p) + logsumexp_N (neg_margin - d(a,n))), Euclidean d between rows, as in
    Hermans et al. 2017 and pytorch-metric-learning's GeneralizedLiftedStructureLoss.
    """

    requires_miner = True
    miner_output = ANCHOR_SETS
    requires_normalized = False

    options = (
        Option("--loss_lifted_neg_margin", default=1, type=non_negative_float),
        Option("--loss_lifted_l2", default=0.005, type=non_negative_float),
        Option("--loss_lifted_formulation", default="published",
               choices=["published", "corrected"],
               help="lifted: 'published' takes the published code's norm over the set of "
                    "positives/negatives per embedding dimension (what the paper's rows ran); "
                    "'corrected' uses the Euclidean distances between rows. See docs/PARITY.md."),
    )

    def __init__(self, miner, neg_margin: float = 1.0, l2_weight: float = 0.005,
                 formulation: str = "published") -> None:
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"--loss_lifted_formulation: expected one of "
                             f"{', '.join(FORMULATIONS)}, got '{formulation}'")
        self.formulation = formulation
        self.miner = miner
        self.neg_margin = neg_margin
        self.l2_weight = l2_weight

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "LiftedCriterion":
        return cls(miner, opt.loss_lifted_neg_margin, opt.loss_lifted_l2,
                   opt.loss_lifted_formulation)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        if self.formulation == "published":
            anchors, positives, negatives = self.miner(embeddings, labels)
            losses = published_lifted_terms(embeddings, anchors, positives, negatives,
                                            self.neg_margin)
        else:
            distances = accurate_pairwise_distances(embeddings)
            anchors, positives, negatives = self.miner(embeddings, labels, distances.detach())
            anchor_distances = distances[anchors]
            pos_term = masked_log_sum_exp(anchor_distances, positives)
            neg_term = masked_log_sum_exp(self.neg_margin - anchor_distances, negatives)
            losses = F.relu(pos_term + neg_term)
        self.stats = anchored_pair_stats(anchors, positives | negatives, num_real)
        self.stats.update(miner_stats(self.miner))
        return losses.sum() / max(len(losses), 1) + self.l2_weight * mean_norm(embeddings)
