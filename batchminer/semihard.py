"""``semihard``: FaceNet semi-hard negatives (Schroff et al. 2015), one triplet per anchor as in
the published DAS / Revisiting-DML miner; one triplet per positive pair as an option."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from utilities.options import Option, non_negative_float

from . import REGISTRY
from ._base import TRIPLETS, BaseMiner
from ._functional import detached_distances, label_masks, random_choice, stack_triplets


@REGISTRY.register("semihard")
class SemihardMiner(BaseMiner):
    """Default (published): one triplet per anchor. The positive p is drawn uniformly among the
    anchor's other same-class rows; the negative uniformly among the semi-hard window
    ``d(a,p) < d(a,n) < d(a,p) + margin``, or uniformly among *all* the anchor's negatives when the
    window is empty. Anchors without a positive or a negative are skipped.

    ``per_pair=True`` (``--miner_semihard_per_pair``): one triplet per positive pair (a, p), the
    window negative drawn uniformly, the hardest (closest) negative when the window is empty.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative). ``stats['semihard_fraction']``:
    share of rows whose negative came from the window.
    """

    output = TRIPLETS

    options = (
        Option("--miner_semihard_margin", default=None, type=non_negative_float,
               help="Margin of the semihard window; default the running loss's "
                    "--loss_<loss>_margin (published), or --loss_triplet_margin when that loss "
                    "has none."),
        Option("--miner_semihard_per_pair", action="store_true",
               help="semihard miner: one triplet per positive pair with the hardest negative as "
                    "fallback, instead of the published one triplet per anchor with a random "
                    "positive and a random negative as fallback. See docs/PARITY.md."),
    )

    def __init__(self, margin: float = 0.2, per_pair: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.per_pair = per_pair

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> "SemihardMiner":
        # --miner_semihard_margin defaults to the margin of the running loss (published).
        return cls(margin=opt.miner_semihard_margin, per_pair=opt.miner_semihard_per_pair)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        distances = detached_distances(embeddings, distances)
        positives, negatives = label_masks(labels)
        if self.per_pair:
            return self._per_pair(distances, positives, negatives)
        positive, has_positive = random_choice(positives)
        anchors = torch.arange(len(labels), device=labels.device)
        d_ap = distances[anchors, positive][:, None]
        window = negatives & (distances > d_ap) & (distances < d_ap + self.margin)
        semihard, in_window = random_choice(window)
        any_negative, has_negative = random_choice(negatives)
        negative = torch.where(in_window, semihard, any_negative)
        valid = has_positive & has_negative
        self.stats = {"semihard_fraction": ((in_window & valid).sum()
                                            / valid.sum().clamp_min(1)).detach()}
        return stack_triplets(valid, positive, negative)

    def _per_pair(self, distances: torch.Tensor, positives: torch.Tensor,
                  negatives: torch.Tensor) -> torch.Tensor:
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
