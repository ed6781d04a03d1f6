"""``random``: triplets drawn uniformly from all valid (anchor, positive, negative) triplets."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._base import BaseMiner
from ._functional import label_masks, random_choice, weighted_choice


@REGISTRY.register("random")
class RandomMiner(BaseMiner):
    """As many triplets as rows, each uniform over all valid triplets of the batch (with
    replacement): the anchor is drawn with probability proportional to its number of valid
    triplets (#positives x #negatives), then a positive and a negative uniformly.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative).
    """

    def __init__(self, num_triplets: Optional[int] = None) -> None:
        super().__init__()
        self.num_triplets = num_triplets  # None: one per row of the batch

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        positives, negatives = label_masks(labels)
        num = self.num_triplets or labels.shape[0]
        per_anchor = positives.sum(1).float() * negatives.sum(1).float()
        anchor_log_weights = per_anchor.log().expand(num, -1)
        anchors, has_any = weighted_choice(anchor_log_weights)
        positive, _ = random_choice(positives[anchors])
        negative, _ = random_choice(negatives[anchors])
        triplets = torch.stack([anchors, positive, negative], dim=1)
        # Rows are dropped only when the batch has no valid triplet at all.
        return triplets[has_any.nonzero().squeeze(1)]
