"""``random_distance``: distance-weighted sampling on randomly permuted labels (the published
control of Revisiting-DML: the sampling of ``distance`` with the label information destroyed)."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._functional import stack_triplets
from .distance import DistanceMiner


@REGISTRY.register("random_distance")
class RandomDistanceMiner(DistanceMiner):
    """The labels of the batch are permuted at random; then, as published, every anchor with
    another row of its (permuted) class gets a random such row as positive and a negative (a row
    of another permuted class) drawn by the ``distance`` miner's inverse-density weights, with
    its cutoffs (``--miner_distance_*``). Triplets therefore ignore the true labels.

    Returns a ``(T, 3)`` LongTensor of (anchor, positive, negative).
    """

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        permuted = labels[torch.randperm(len(labels), device=labels.device)]
        _, positive, has_positive, negative, has_negative = self.choose(embeddings, permuted,
                                                                        distances)
        return stack_triplets(has_positive & has_negative, positive, negative)
