"""``distance``: distance-weighted sampling (Wu et al. 2017, "Sampling matters in deep embedding
learning")."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from utilities.options import Option, non_negative_float, positive_float

from . import REGISTRY
from ._base import TRIPLETS, BaseMiner
from ._functional import (detached_distances, inverse_sphere_log_density, label_masks,
                          random_choice, stack_triplets, weighted_choice)


def distance_weighted_log_weights(distances: torch.Tensor, negatives: torch.Tensor, dim: int,
                                  lower_cutoff: float,
                                  upper_cutoff: Optional[float] = None) -> torch.Tensor:
    """Log sampling weights of every negative: 1/q(d) with d clamped below at ``lower_cutoff``
    (published) and, when ``upper_cutoff`` is given, above at it.

    The lower clamp keeps the hardest negatives from dominating (their gradients are noisy). The
    published miner has no upper clamp (its note: cutting far distances made results slightly
    worse), so 1/q grows again towards d = 2; the optional upper clamp bounds that weight. Rows
    are shifted by their maximum; non-negatives are ``-inf``.
    """
    clipped = distances.clamp(min=lower_cutoff, max=upper_cutoff)
    log_weights = inverse_sphere_log_density(clipped, dim).masked_fill(~negatives, float("-inf"))
    row_max = log_weights.amax(dim=1, keepdim=True)
    return log_weights - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


@REGISTRY.register("distance")
class DistanceMiner(BaseMiner):
    """One triplet per anchor (published): a positive drawn uniformly among the anchor's other
    same-class rows (the anchor itself when it is alone in its class, as published) and a
    negative drawn with probability proportional to 1/q(d(a, n)), q the density of pairwise
    distances of uniform points on the unit hypersphere of the embedding dimension (embeddings
    are expected L2-normalized), with d clamped below at ``lower_cutoff``. With ``clip_upper``
    (``--miner_distance_clip_upper``) d is also clamped above at ``upper_cutoff``, which the
    published miner does not do.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative); anchors without a negative
    are skipped. ``stats['negative_distance']``: mean d(a, n) of the chosen negatives.
    """

    output = TRIPLETS

    options = (
        Option("--miner_distance_lower_cutoff", default=0.5, type=non_negative_float,
               help="distance miner: distances below are clamped up to this value."),
        Option("--miner_distance_upper_cutoff", default=1.4, type=positive_float,
               help="distance miner: upper clamp, used only with --miner_distance_clip_upper."),
        Option("--miner_distance_clip_upper", action="store_true",
               help="distance miner: also clamp distances above --miner_distance_upper_cutoff "
                    "(not published: the published miner clamps below only). See docs/PARITY.md."),
    )

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float = 1.4,
                 clip_upper: bool = False) -> None:
        super().__init__()
        if not lower_cutoff < upper_cutoff:
            raise ValueError(f"{self.registry_name} miner: lower cutoff {lower_cutoff} must be "
                             f"below the upper cutoff {upper_cutoff}")
        self.lower_cutoff = lower_cutoff
        self.upper_cutoff = upper_cutoff
        self.clip_upper = clip_upper

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> "DistanceMiner":
        return cls(opt.miner_distance_lower_cutoff, opt.miner_distance_upper_cutoff,
                   opt.miner_distance_clip_upper)

    def choose(self, embeddings: torch.Tensor, labels: torch.Tensor,
               distances: Optional[torch.Tensor]):
        """Per anchor: a random other positive and a distance-weighted negative, each with a flag
        saying whether the anchor has one; also returns the (detached) distance matrix."""
        distances = detached_distances(embeddings, distances)
        positives, negatives = label_masks(labels)
        upper = self.upper_cutoff if self.clip_upper else None
        log_weights = distance_weighted_log_weights(distances, negatives, embeddings.shape[1],
                                                    self.lower_cutoff, upper)
        negative, has_negative = weighted_choice(log_weights)
        positive, has_positive = random_choice(positives)
        return distances, positive, has_positive, negative, has_negative

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        distances, positive, has_positive, negative, has_negative = self.choose(
            embeddings, labels, distances)
        anchors = torch.arange(len(labels), device=labels.device)
        positive = torch.where(has_positive, positive, anchors)  # alone in its class: itself
        triplets = stack_triplets(has_negative, positive, negative)
        chosen = distances[triplets[:, 0], triplets[:, 2]]
        self.stats = {"negative_distance": (chosen.sum() / max(len(chosen), 1)).detach()}
        return triplets
