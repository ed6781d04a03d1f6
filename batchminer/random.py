"""``random``: triplets drawn uniformly, without replacement, from all valid triplets."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._base import TRIPLETS, BaseMiner
from ._functional import label_masks, random_choice, weighted_choice


@REGISTRY.register("random")
class RandomMiner(BaseMiner):
    """As many distinct triplets as rows, a uniformly random subset of all valid triplets (a, p, n)
    of the batch (p != a of a's class, n of another class), as the published miner
    (``random.sample`` over the enumerated triplets).

    Vectorized without enumerating the B^3 triplets: ``4 x num`` uniform draws with replacement
    (anchor weighted by its #positives x #negatives, then a positive and a negative uniformly)
    keep their first occurrences in draw order; the first ``num`` distinct ones are a uniform
    subset without replacement. When the batch has fewer valid triplets than ``num`` (the
    published miner then fails), or the draws hold fewer distinct ones, fewer rows come back.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative).
    """

    output = TRIPLETS

    oversampling = 4

    def __init__(self, num_triplets: Optional[int] = None) -> None:
        super().__init__()
        self.num_triplets = num_triplets  # None: one per row of the batch

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        positives, negatives = label_masks(labels)
        batch = labels.shape[0]
        num = self.num_triplets or batch
        draws = self.oversampling * num
        per_anchor = positives.sum(1).float() * negatives.sum(1).float()
        anchors, has_any = weighted_choice(per_anchor.log().expand(draws, -1))
        positive, _ = random_choice(positives[anchors])
        negative, _ = random_choice(negatives[anchors])
        # First occurrence of every distinct triplet, in draw order (stable sort by triplet id).
        ids = (anchors * batch + positive) * batch + negative
        sorted_ids, order = torch.sort(ids, stable=True)
        first_sorted = torch.ones_like(sorted_ids, dtype=torch.bool)
        first_sorted[1:] = sorted_ids[1:] != sorted_ids[:-1]
        first = torch.zeros_like(first_sorted).scatter(0, order, first_sorted)
        keep = first & has_any & (torch.cumsum(first.long(), 0) <= num)
        triplets = torch.stack([anchors, positive, negative], dim=1)
        return triplets[keep.nonzero().squeeze(1)]
