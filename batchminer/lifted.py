"""``lifted``: every positive and every negative of each anchor (generalized lifted structure,
Hermans et al. 2017)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import REGISTRY
from ._base import ANCHOR_SETS, BaseMiner
from ._functional import label_masks


@REGISTRY.register("lifted")
class LiftedMiner(BaseMiner):
    """Returns ``(anchors, positives, negatives)``:

    * ``anchors``: LongTensor (A,), the rows that have at least one positive and one negative;
    * ``positives``: BoolTensor (A, B), all other rows of the anchor's class;
    * ``negatives``: BoolTensor (A, B), all rows of other classes.
    """

    output = ANCHOR_SETS

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positives, negatives = label_masks(labels)
        anchors = (positives.any(dim=1) & negatives.any(dim=1)).nonzero().squeeze(1)
        return anchors, positives[anchors], negatives[anchors]
