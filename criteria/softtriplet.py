"""``softtriplet``: SoftTriple loss (Qian et al. 2019), several learnable centers per class."""
from __future__ import annotations

import argparse
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, non_negative_float, positive_float, positive_int

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import cosine_to, full_precision, gram, row_stats


@REGISTRY.register("softtriplet")
class SoftTripleCriterion(BaseCriterion):
    """Class similarity S_c = sum_k softmax_k(s_ck / gamma) s_ck over the class's K centers (cosine
    s); loss = CE(lambda (S - delta 1[y]), y) + reg_weight x the paper's center regularizer
    sum_{c, k<k'} sqrt(2 + 1e-5 - 2 w_ck.w_ck') / (C K (K - 1)). Centers learn with
    lr = --lr x --loss_softtriplet_lrmulti."""

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_softtriplet_n_centroids", default=2, type=positive_int),
        Option("--loss_softtriplet_margin_delta", default=0.01, type=non_negative_float),
        Option("--loss_softtriplet_gamma", default=0.1, type=positive_float),
        Option("--loss_softtriplet_lambda", default=8, type=positive_float),
        Option("--loss_softtriplet_reg_weight", default=0.2, type=non_negative_float),
        Option("--loss_softtriplet_lrmulti", default=1, type=non_negative_float),
    )

    def __init__(self, num_classes: int, embed_dim: int, centers_per_class: int = 2,
                 margin_delta: float = 0.01, gamma: float = 0.1, lam: float = 8.0,
                 reg_weight: float = 0.2, lr: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.centers_per_class = centers_per_class
        self.margin_delta = margin_delta
        self.gamma = gamma
        self.lam = lam
        self.reg_weight = reg_weight
        self.lr = lr
        self.centers = nn.Parameter(torch.empty(num_classes * centers_per_class, embed_dim))
        nn.init.kaiming_uniform_(self.centers, a=math.sqrt(5))
        same_class = torch.arange(num_classes).repeat_interleave(centers_per_class)
        pairs = (same_class[:, None] == same_class[None, :]).triu(diagonal=1)
        self.register_buffer("same_class_pairs", pairs, persistent=False)

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "SoftTripleCriterion":
        return cls(num_classes, opt.embed_dim, opt.loss_softtriplet_n_centroids,
                   opt.loss_softtriplet_margin_delta, opt.loss_softtriplet_gamma,
                   opt.loss_softtriplet_lambda, opt.loss_softtriplet_reg_weight,
                   opt.lr * opt.loss_softtriplet_lrmulti)

    def param_groups(self) -> List[dict]:
        return [{"params": [self.centers], "lr": self.lr}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        centers = F.normalize(self.centers, dim=1)
        similarities = cosine_to(embeddings, self.centers).view(len(labels), self.num_classes,
                                                     self.centers_per_class)
        weights = F.softmax(similarities / self.gamma, dim=2)
        class_similarities = (weights * similarities).sum(dim=2)
        own = F.one_hot(labels, self.num_classes).to(class_similarities.dtype)
        margin = own * self.margin_delta
        loss = F.cross_entropy(self.lam * (class_similarities - margin), labels)
        if self.reg_weight > 0 and self.centers_per_class > 1:
            # masked sum over the full matrix rather than boolean indexing (which syncs)
            spread = torch.sqrt(2.0 + 1e-5 - 2.0 * gram(centers)) * self.same_class_pairs
            k = self.centers_per_class
            loss = loss + self.reg_weight * spread.sum() / (self.num_classes * k * (k - 1))
        self.stats = row_stats(len(labels), num_real, embeddings.device)
        return loss
