"""``proxyanchor``: Proxy-Anchor loss (Kim et al. 2020), one learnable proxy per class."""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, non_negative_float, positive_float

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import cosine_to, full_precision, masked_log1p_sum_exp, row_stats


@REGISTRY.register("proxyanchor")
class ProxyAnchorCriterion(BaseCriterion):
    """Eq. 4 of the paper with cosine similarities s(x, p):
    1/|P+| sum_{p in P+} log(1 + sum_{x of class p} exp(-alpha (s - margin)))
    + 1/|P| sum_{p in P} log(1 + sum_{x not of class p} exp(alpha (s + margin))),
    P+ the proxies with a positive in the batch. Proxies learn with lr = --lr x lrmulti."""

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_proxyanchor_margin", default=0.1, type=non_negative_float),
        Option("--loss_proxyanchor_alpha", default=32, type=positive_float),
        Option("--loss_proxyanchor_lrmulti", default=100, type=non_negative_float),
        Option("--loss_proxyanchor_decay", default=0.0, type=non_negative_float),
    )

    def __init__(self, num_classes: int, embed_dim: int, margin: float = 0.1,
                 alpha: float = 32.0, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")  # published init: std sqrt(2 / C)
        self.margin = margin
        self.alpha = alpha
        self.lr = lr
        self.weight_decay = weight_decay

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "ProxyAnchorCriterion":
        return cls(num_classes, opt.embed_dim, opt.loss_proxyanchor_margin,
                   opt.loss_proxyanchor_alpha, opt.lr * opt.loss_proxyanchor_lrmulti,
                   opt.loss_proxyanchor_decay)

    def param_groups(self) -> List[dict]:
        return [{"params": [self.proxies], "lr": self.lr, "weight_decay": self.weight_decay}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        cosine = cosine_to(embeddings, self.proxies)  # B x C
        own = F.one_hot(labels, num_classes=cosine.shape[1]).bool()
        pos_terms = masked_log1p_sum_exp(-self.alpha * (cosine - self.margin), own, dim=0)
        neg_terms = masked_log1p_sum_exp(self.alpha * (cosine + self.margin), ~own, dim=0)
        with_positives = own.any(dim=0).sum().clamp_min(1)
        self.stats = row_stats(len(labels), num_real, embeddings.device)
        return pos_terms.sum() / with_positives + neg_terms.mean()
