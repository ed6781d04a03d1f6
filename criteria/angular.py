"""``angular``: angular loss combined with N-pair (Wang et al. 2017, "Deep metric learning with
angular loss", eq. 8 and the N-pair combination of section 4)."""
from __future__ import annotations

import argparse
import math
from typing import Optional

import torch
import torch.nn.functional as F

from utilities.options import Option, between, non_negative_float

from batchminer._base import NPAIR_TUPLES

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import (anchored_pair_stats, full_precision, masked_log1p_sum_exp,
                          mean_norm, miner_stats)
from .npair import npair_terms


@REGISTRY.register("angular")
class AngularCriterion(BaseCriterion):
    """npair + ``angular_weight`` x angular + ``l2_weight`` x mean norm, per anchor (a, p) and
    its negatives n (``npair`` miner). The angular term works on L2-normalized rows:
    log(1 + sum_n exp(4 tan^2(alpha) (a + p).n - 2 (1 + tan^2(alpha)) a.p)); the N-pair term on
    the raw rows. (Revisiting-DML also clamps the N-pair exponent to [-50, 50] against overflow;
    the log-sum-exp here is shifted instead, so large values keep their gradient.)"""

    requires_miner = True
    miner_output = NPAIR_TUPLES
    requires_normalized = False

    options = (
        Option("--loss_angular_alpha", default=45,
               type=between(0.0, 90.0, open_low=True, open_high=True)),
        Option("--loss_angular_npair_ang_weight", default=2, type=non_negative_float),
        Option("--loss_angular_npair_l2", default=0.005, type=non_negative_float),
    )

    def __init__(self, miner, alpha_degrees: float = 45.0, angular_weight: float = 2.0,
                 l2_weight: float = 0.005) -> None:
        super().__init__()
        self.miner = miner
        self.squared_tan = math.tan(math.radians(alpha_degrees)) ** 2
        self.angular_weight = angular_weight
        self.l2_weight = l2_weight

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "AngularCriterion":
        return cls(miner, opt.loss_angular_alpha, opt.loss_angular_npair_ang_weight,
                   opt.loss_angular_npair_l2)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        anchors, positives, negatives = self.miner(embeddings, labels)
        count = max(len(anchors), 1)
        npair_loss = npair_terms(embeddings, anchors, positives, negatives).sum() / count

        normalized = F.normalize(embeddings, dim=1)
        a, p = normalized[anchors], normalized[positives]
        exponent = (4.0 * self.squared_tan * (a + p) @ normalized.T
                    - 2.0 * (1.0 + self.squared_tan) * (a * p).sum(dim=1, keepdim=True))
        angular_loss = masked_log1p_sum_exp(exponent, negatives).sum() / count

        used = negatives.clone()
        used[torch.arange(len(anchors), device=used.device), positives] = True
        self.stats = anchored_pair_stats(anchors, used, num_real)
        self.stats.update(miner_stats(self.miner))
        return (npair_loss + self.angular_weight * angular_loss
                + self.l2_weight * mean_norm(embeddings))
