"""``npair``: one positive per anchor, every row of another class a negative (Sohn 2016, in the
Revisiting-DML variant that uses all other-class rows of the batch)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import REGISTRY
from ._base import NPAIR_TUPLES, BaseMiner
from ._functional import label_masks, random_choice


@REGISTRY.register("npair")
class NPairMiner(BaseMiner):
    """Returns ``(anchors, positives, negatives)``:

    * ``anchors``: LongTensor (A,), the rows that have a positive and a negative;
    * ``positives``: LongTensor (A,), exactly one positive per anchor, drawn uniformly;
    * ``negatives``: BoolTensor (A, B), row k flags the negatives of ``anchors[k]`` (every row of
      another class), a mask rather than a ragged list so that the loss stays one batched op.
    """

    output = NPAIR_TUPLES

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positives, negatives = label_masks(labels)
        positive, has_positive = random_choice(positives)
        anchors = (has_positive & negatives.any(dim=1)).nonzero().squeeze(1)
        return anchors, positive[anchors], negatives[anchors]
