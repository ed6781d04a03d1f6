"""``rho_distance``: distance-weighted sampling with rho-regularization (Roth et al. 2020,
"Revisiting training strategies and generalization performance in deep metric learning")."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from . import REGISTRY
from ._base import BaseMiner
from ._functional import (detached_distances, label_masks, random_choice, stack_triplets,
                          weighted_choice)
from .distance import distance_weighted_log_weights


@REGISTRY.register("rho_distance")
class RhoDistanceMiner(BaseMiner):
    """The ``distance`` miner, except that with probability ``push_probability`` (``--miner_rho_
    distance_cp``) an anchor's triplet becomes (a, a, p): a positive p of the anchor takes the
    negative's place, so that a triplet loss pushes same-class samples apart up to the margin
    (rho-regularization: it keeps more directions of the embedding space in use).

    Returns a ``(T, 3)`` LongTensor; in the (a, a, p) rows anchor and positive coincide and the
    "negative" shares the anchor's label. ``stats['push_fraction']``: share of such rows.
    """

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float = 1.4,
                 push_probability: float = 0.2) -> None:
        super().__init__()
        if not lower_cutoff < upper_cutoff:
            raise ValueError(f"rho_distance miner: lower cutoff {lower_cutoff} must be below the "
                             f"upper cutoff {upper_cutoff}")
        if not 0.0 <= push_probability <= 1.0:
            raise ValueError(f"--miner_rho_distance_cp must lie in [0, 1], got {push_probability}")
        self.lower_cutoff = lower_cutoff
        self.upper_cutoff = upper_cutoff
        self.push_probability = push_probability

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> "RhoDistanceMiner":
        return cls(opt.miner_rho_distance_lower_cutoff, opt.miner_rho_distance_upper_cutoff,
                   opt.miner_rho_distance_cp)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        distances = detached_distances(embeddings, distances)
        positives, negatives = label_masks(labels)
        log_weights = distance_weighted_log_weights(distances, negatives, embeddings.shape[1],
                                                    self.lower_cutoff, self.upper_cutoff)
        negative, has_negative = weighted_choice(log_weights)
        positive, has_positive = random_choice(positives)
        push = torch.rand(labels.shape, device=labels.device) < self.push_probability
        anchors = torch.arange(len(labels), device=labels.device)
        second = torch.where(push, anchors, positive)
        third = torch.where(push, positive, negative)
        valid = has_positive & (has_negative | push)
        triplets = stack_triplets(valid, second, third)
        self.stats = {"push_fraction": ((push & valid).sum() / valid.sum().clamp_min(1)).detach()}
        return triplets
