"""``margin``: margin loss with learnable per-class boundaries beta (Wu et al. 2017)."""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, non_negative_float

from batchminer._base import TRIPLETS

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import full_precision, mine_triplets, row_differences, triplet_stats

DIVISORS = ("active_triplets", "active_terms")


@REGISTRY.register("margin")
class MarginCriterion(BaseCriterion):
    """For mined triplets (a, p, n) with beta = beta[y_a] and d(x, y) = sqrt(|x - y|^2 + 1e-8):
    sum (relu(d(a,p) - beta + margin) + relu(beta - d(a,n) + margin)) / count + nu * sum beta,
    the beta regularizer added after the division as published (summed over the triplets'
    anchors; the constant beta counted once). beta is a learnable per-class parameter (its own
    learning rate ``--loss_margin_beta_lr``) unless ``--loss_margin_beta_constant``.

    ``count`` (1 when 0): with ``divisor='active_triplets'`` (default, the published loss) the
    number of triplets with at least one non-zero term, since the published code adds the two
    bool tensors ``pos > 0`` and ``neg > 0``, which torch evaluates as a logical OR; with
    ``divisor='active_terms'`` (``--loss_margin_divisor active_terms``) the number of non-zero
    terms, as in Wu et al. 2017 and pytorch-metric-learning. docs/PARITY.md has a worked example.
    """

    requires_miner = True
    miner_output = TRIPLETS
    requires_normalized = True

    options = (
        Option("--loss_margin_margin", default=0.2, type=non_negative_float),
        Option("--loss_margin_beta_lr", default=0.0005, type=non_negative_float),
        Option("--loss_margin_beta", default=1.2, type=non_negative_float),
        Option("--loss_margin_nu", default=0, type=non_negative_float),
        Option("--loss_margin_beta_constant", action="store_true",
               help="margin: keep beta fixed at --loss_margin_beta instead of learning it."),
        Option("--loss_margin_divisor", default="active_triplets",
               choices=["active_triplets", "active_terms"],
               help="margin: divide the summed terms by the number of triplets with an active "
                    "term (published, default) or by the number of active terms. See "
                    "docs/PARITY.md."),
    )

    def __init__(self, miner, num_classes: int, margin: float = 0.2, beta: float = 1.2,
                 nu: float = 0.0, beta_lr: float = 0.0005, beta_constant: bool = False,
                 divisor: str = "active_triplets") -> None:
        super().__init__()
        if divisor not in DIVISORS:
            raise ValueError(f"--loss_margin_divisor: expected one of {', '.join(DIVISORS)}, "
                             f"got '{divisor}'")
        self.divisor = divisor
        self.miner = miner
        self.margin = margin
        self.nu = nu
        self.beta_lr = beta_lr
        self.beta_constant = beta_constant
        initial = torch.full((num_classes,), float(beta))
        if beta_constant:
            self.register_buffer("beta", initial)
        else:
            self.beta = nn.Parameter(initial)

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "MarginCriterion":
        return cls(miner, num_classes, opt.loss_margin_margin, opt.loss_margin_beta,
                   opt.loss_margin_nu, opt.loss_margin_beta_lr, opt.loss_margin_beta_constant,
                   opt.loss_margin_divisor)

    def param_groups(self) -> List[dict]:
        return [] if self.beta_constant else [{"params": [self.beta], "lr": self.beta_lr}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        beta = self.beta[labels[anchors]]
        d_ap = (row_differences(embeddings, anchors, positives).pow(2).sum(dim=1) + 1e-8).sqrt()
        d_an = (row_differences(embeddings, anchors, negatives).pow(2).sum(dim=1) + 1e-8).sqrt()
        pos_loss = F.relu(d_ap - beta + self.margin)
        neg_loss = F.relu(beta - d_an + self.margin)
        if self.divisor == "active_triplets":
            active = ((pos_loss > 0) | (neg_loss > 0)).sum()
        else:
            active = (pos_loss > 0).sum() + (neg_loss > 0).sum()
        loss = (pos_loss + neg_loss).sum() / active.clamp_min(1)
        if self.nu:
            loss = loss + self.nu * (self.beta[0] if self.beta_constant else beta.sum())
        self.stats = triplet_stats(triplets, num_real, self.miner)
        self.stats["active"] = active.detach()
        return loss
