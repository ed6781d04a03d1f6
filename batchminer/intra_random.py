"""``intra_random``: random triplets whose three rows share one class."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._base import BaseMiner
from ._functional import label_masks, random_choice, stack_triplets


@REGISTRY.register("intra_random")
class IntraRandomMiner(BaseMiner):
    """One triplet per anchor (a, p, n) with p != a and n != a drawn uniformly from the anchor's
    own class (p and n may coincide when the class has two rows). With a triplet loss this spreads
    each class out (an intra-class regularizer, as in Revisiting-DML), so it is not a miner for
    class separation: the "negative" deliberately shares the anchor's label.

    Returns a ``(T, 3)`` LongTensor; anchors alone in their class are skipped.
    """

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        positives, _ = label_masks(labels)
        positive, has_positive = random_choice(positives)
        negative, _ = random_choice(positives)
        return stack_triplets(has_positive, positive, negative)
