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
from ._functional import (accurate_pairwise_distances, full_precision, mean_over, mine_triplets,
                          row_differences, triplet_stats)

SECOND_TERMS = ("all_pairs", "own_fourth")


@REGISTRY.register("quadruplet")
class QuadrupletCriterion(BaseCriterion):
    """mean relu(d(a,p) - d(a,n) + alpha_1) over the mined triplets (a, p, n), plus a second
    term on the pairs (n, m) of negatives and fourth rows m (one m drawn per triplet; the rows
    without a candidate drop out of it). Distances are Euclidean: from row differences, and for
    the T x T term from :func:`~criteria._functional.accurate_pairwise_distances`.

    Second term, ``second_term='all_pairs'`` (default, the published loss): the published code
    indexes the batch with (T, 1) index arrays, so its negatives are a (T, 1, D) tensor and its
    fourth rows a (T, D) one; their difference broadcasts to (T, T, D), and the term is the mean
    of relu(d(a_i,p_i) - d(n_i, m_j) + alpha_2) over **all** T x T pairs (i, j).
    ``second_term='own_fourth'`` (``--loss_quadruplet_second_term own_fourth``): each triplet
    with its own fourth row only, mean of relu(d(a_i,p_i) - d(n_i, m_i) + alpha_2), as in the
    paper (Chen et al. 2017, eq. 3). docs/PARITY.md has a worked example.

    Fourth row, default (published): m is the row whose *index* k is drawn uniformly among the
    triplet indices k whose negative index differs from this triplet's (the published code reads
    triplet indices as batch rows; m may share a's or n's class). ``fourth_by_class=True``
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
        Option("--loss_quadruplet_second_term", default="all_pairs",
               choices=["all_pairs", "own_fourth"],
               help="quadruplet: second term over all (negative, fourth row) pairs of the batch's "
                    "triplets, as the published code broadcasts (default), or each triplet's "
                    "negative with its own fourth row (the paper). See docs/PARITY.md."),
    )

    def __init__(self, miner, margin_alpha_1: float = 0.2, margin_alpha_2: float = 0.2,
                 fourth_by_class: bool = False, second_term: str = "all_pairs") -> None:
        super().__init__()
        if second_term not in SECOND_TERMS:
            raise ValueError(f"--loss_quadruplet_second_term: expected one of "
                             f"{', '.join(SECOND_TERMS)}, got '{second_term}'")
        self.second_term = second_term
        self.fourth_by_class = fourth_by_class
        self.miner = miner
        self.margin_alpha_1 = margin_alpha_1
        self.margin_alpha_2 = margin_alpha_2

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "QuadrupletCriterion":
        return cls(miner, opt.loss_quadruplet_margin_alpha_1, opt.loss_quadruplet_margin_alpha_2,
                   opt.loss_quadruplet_fourth_by_class, opt.loss_quadruplet_second_term)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        if self.second_term == "all_pairs":  # one matrix for the miner and the T x T term
            distances = accurate_pairwise_distances(embeddings)
            triplets = self.miner(embeddings, labels, distances.detach())
        else:
            triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        if self.fourth_by_class:
            candidates = ((labels[None, :] != labels[anchors][:, None])
                          & (labels[None, :] != labels[negatives][:, None]))
        else:  # triplet index k as a batch row, where triplet k's negative differs
            rows = min(len(triplets), len(labels))
            candidates = negatives[None, :rows] != negatives[:, None]
        fourth, found = random_choice(candidates)
        d_ap = row_differences(embeddings, anchors, positives).norm(dim=1)
        d_an = row_differences(embeddings, anchors, negatives).norm(dim=1)
        triplet_loss = F.relu(d_ap - d_an + self.margin_alpha_1)
        if self.second_term == "all_pairs":  # (i, j): triplet i's negative, triplet j's fourth
            d_nm = distances.index_select(0, negatives).index_select(1, fourth)
            pair_losses = F.relu(d_ap[:, None] - d_nm + self.margin_alpha_2)
            kept = found[None, :].expand_as(pair_losses)
            quadruplet_loss = mean_over(pair_losses, kept)
        else:
            d_nm = row_differences(embeddings, negatives, fourth).norm(dim=1)
            quadruplet_loss = mean_over(F.relu(d_ap - d_nm + self.margin_alpha_2), found)
        self.stats = triplet_stats(torch.cat([triplets, fourth[:, None]], dim=1), num_real,
                                   self.miner)
        return triplet_loss.sum() / max(len(triplets), 1) + quadruplet_loss
