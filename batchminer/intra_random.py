"""``intra_random``: random triplets whose three rows share one class."""
from __future__ import annotations

from typing import Optional

import torch

from . import REGISTRY
from ._base import TRIPLETS, BaseMiner
from ._functional import random_choice


@REGISTRY.register("intra_random")
class IntraRandomMiner(BaseMiner):
    """As published: as many triplets as rows; for each, a class drawn uniformly (with replacement)
    among the classes present in the batch, then anchor, "positive" and "negative" drawn
    uniformly and with replacement among that class's rows (so they may coincide). With a
    triplet loss this is an intra-class regularizer (Revisiting-DML), not a miner for class
    separation: the "negative" deliberately shares the anchor's label.

    Returns a ``(B, 3)`` LongTensor.
    """

    output = TRIPLETS

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch = len(labels)
        same = labels[:, None] == labels[None, :]
        # One representative row per class present: its first row.
        first_of_class = ~torch.tril(same, diagonal=-1).any(dim=1)
        representative, _ = random_choice(first_of_class.expand(batch, -1))
        members = same[representative]
        picks = [random_choice(members)[0] for _ in range(3)]  # three draws, not a sample loop
        return torch.stack(picks, dim=1)
