"""``rho_distance``: distance-weighted sampling with rho-regularization (Roth et al. 2020,
"Revisiting training strategies and generalization performance in deep metric learning")."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from utilities.options import Option, between, non_negative_float, positive_float

from . import REGISTRY
from ._functional import stack_triplets
from .distance import DistanceMiner


@REGISTRY.register("rho_distance")
class RhoDistanceMiner(DistanceMiner):
    """The ``distance`` miner, except that with probability ``push_probability`` (``--miner_rho_
    distance_cp``) an anchor's triplet becomes (a, a, p): a positive p of the anchor takes the
    negative's place, so that a triplet loss pushes same-class samples apart up to the margin
    (rho-regularization: it keeps more directions of the embedding space in use).

    As published, only anchors with another same-class row get a triplet, and distances are
    clamped below only (``--miner_rho_distance_clip_upper`` adds the upper clamp).

    Returns a ``(T, 3)`` LongTensor; in the (a, a, p) rows anchor and positive coincide and the
    "negative" shares the anchor's label. ``stats['push_fraction']``: share of such rows.
    """

    options = (
        Option("--miner_rho_distance_lower_cutoff", default=0.5, type=non_negative_float),
        Option("--miner_rho_distance_upper_cutoff", default=1.4, type=positive_float,
               help="rho_distance miner: upper clamp, used only with "
                    "--miner_rho_distance_clip_upper."),
        Option("--miner_rho_distance_clip_upper", action="store_true",
               help="rho_distance miner: also clamp distances above the upper cutoff (not "
                    "published)."),
        Option("--miner_rho_distance_cp", default=0.2, type=between(0.0, 1.0)),
    )

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float = 1.4,
                 push_probability: float = 0.2, clip_upper: bool = False) -> None:
        super().__init__(lower_cutoff, upper_cutoff, clip_upper)
        if not 0.0 <= push_probability <= 1.0:
            raise ValueError(f"--miner_rho_distance_cp must lie in [0, 1], got {push_probability}")
        self.push_probability = push_probability

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> "RhoDistanceMiner":
        return cls(opt.miner_rho_distance_lower_cutoff, opt.miner_rho_distance_upper_cutoff,
                   opt.miner_rho_distance_cp, opt.miner_rho_distance_clip_upper)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        _, positive, has_positive, negative, has_negative = self.choose(embeddings, labels,
                                                                        distances)
        push = torch.rand(labels.shape, device=labels.device) < self.push_probability
        anchors = torch.arange(len(labels), device=labels.device)
        second = torch.where(push, anchors, positive)
        third = torch.where(push, positive, negative)
        valid = has_positive & (has_negative | push)
        triplets = stack_triplets(valid, second, third)
        self.stats = {"push_fraction": ((push & valid).sum() / valid.sum().clamp_min(1)).detach()}
        return triplets
