"""``random_distance``: the ``distance`` miner's triplet layout with a uniformly random negative."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._base import BaseMiner
from ._functional import label_masks, random_choice, stack_triplets


@REGISTRY.register("random_distance")
class RandomDistanceMiner(BaseMiner):
    """One triplet per anchor with a random positive and a uniformly random negative: the control
    for ``distance`` (same number and layout of triplets, no inverse-density weighting).

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative).
    """

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        positives, negatives = label_masks(labels)
        positive, has_positive = random_choice(positives)
        negative, has_negative = random_choice(negatives)
        return stack_triplets(has_positive & has_negative, positive, negative)
