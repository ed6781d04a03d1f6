"""``semihard``: FaceNet semi-hard negatives for every positive pair (Schroff et al. 2015)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from . import REGISTRY
from ._base import BaseMiner
from ._functional import detached_distances, label_masks, random_choice


@REGISTRY.register("semihard")
class SemihardMiner(BaseMiner):
    """For every anchor-positive pair (a, p), a negative n drawn uniformly from the semi-hard window
    ``d(a,p) < d(a,n) < d(a,p) + margin``; when the window is empty, the hardest (closest) negative.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative), one row per positive pair
    whose anchor has a negative. ``stats['semihard_fraction']``: share of rows whose negative came
    from the window.
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> "SemihardMiner":
        return cls(margin=opt.miner_semihard_margin)  # defaults to --loss_triplet_margin

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        distances = detached_distances(embeddings, distances)
        positives, negatives = label_masks(labels)
        pairs = (positives & negatives.any(dim=1, keepdim=True)).nonzero()
        anchors, positive = pairs[:, 0], pairs[:, 1]
        anchor_rows = distances[anchors]
        anchor_negatives = negatives[anchors]
        d_ap = distances[anchors, positive][:, None]
        window = anchor_negatives & (anchor_rows > d_ap) & (anchor_rows < d_ap + self.margin)
        semihard, in_window = random_choice(window)
        hardest = anchor_rows.masked_fill(~anchor_negatives, float("inf")).argmin(dim=1)
        negative = torch.where(in_window, semihard, hardest)
        self.stats = {"semihard_fraction": in_window.float().mean().detach()}
        return torch.stack([anchors, positive, negative], dim=1)
