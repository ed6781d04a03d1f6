"""``softhard``: a random hard positive and a random hard negative per anchor."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._base import TRIPLETS, BaseMiner
from ._functional import detached_distances, label_masks, random_choice, stack_triplets


@REGISTRY.register("softhard")
class SofthardMiner(BaseMiner):
    """One triplet per anchor. Hard negatives are closer than the anchor's farthest positive, hard
    positives farther than its closest negative; one of each is drawn uniformly, falling back to
    any positive (negative) when there is no hard one.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative). ``stats``: share of anchors
    that found a hard positive / a hard negative.
    """

    output = TRIPLETS

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        distances = detached_distances(embeddings, distances)
        positives, negatives = label_masks(labels)
        farthest_positive = distances.masked_fill(~positives, float("-inf")).amax(1, keepdim=True)
        closest_negative = distances.masked_fill(~negatives, float("inf")).amin(1, keepdim=True)
        hard_negatives = negatives & (distances < farthest_positive)
        hard_positives = positives & (distances > closest_negative)
        hard_negative, found_negative = random_choice(hard_negatives)
        hard_positive, found_positive = random_choice(hard_positives)
        any_negative, has_negative = random_choice(negatives)
        any_positive, has_positive = random_choice(positives)
        negative = torch.where(found_negative, hard_negative, any_negative)
        positive = torch.where(found_positive, hard_positive, any_positive)
        valid = has_positive & has_negative
        count = valid.sum().clamp_min(1)
        self.stats = {"hard_positive_fraction": ((found_positive & valid).sum() / count).detach(),
                      "hard_negative_fraction": ((found_negative & valid).sum() / count).detach()}
        return stack_triplets(valid, positive, negative)
