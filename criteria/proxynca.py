"""``proxynca``: ProxyNCA (Movshovitz-Attias et al. 2017), one learnable proxy per class."""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, non_negative_float

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import cosine_to, full_precision, masked_log_sum_exp, row_stats


@REGISTRY.register("proxynca")
class ProxyNCACriterion(BaseCriterion):
    """With x and proxies p L2-normalized and scaled by 3 (a temperature, as in Revisiting-DML):
    mean over rows of |x - p_y|^2 + log sum_{z != y} exp(-|x - p_z|^2), i.e. the NCA probability
    of the own proxy against the other proxies only (the positive proxy is not in the
    denominator, as in the paper; pytorch-metric-learning's ProxyNCA includes it)."""

    requires_miner = False
    requires_normalized = True
    scale = 3.0

    options = (
        Option("--loss_proxynca_lrmulti", default=50, type=non_negative_float),
    )

    def __init__(self, num_classes: int, embed_dim: int, lr: float) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, embed_dim) / 8)
        self.lr = lr

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "ProxyNCACriterion":
        return cls(num_classes, opt.embed_dim, opt.lr * opt.loss_proxynca_lrmulti)

    def param_groups(self) -> List[dict]:
        return [{"params": [self.proxies], "lr": self.lr}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        # |3x - 3p|^2 = 9 (2 - 2 cos(x, p)) for unit x and p
        squared_distances = self.scale ** 2 * (2.0 - 2.0 * cosine_to(embeddings, self.proxies))
        own = F.one_hot(labels, num_classes=self.proxies.shape[0]).bool()
        positive = squared_distances.gather(1, labels[:, None]).squeeze(1)
        losses = positive + masked_log_sum_exp(-squared_distances, ~own)
        self.stats = row_stats(len(labels), num_real, embeddings.device)
        return losses.mean()
