"""``softmax``: normalized softmax (Zhai & Wu 2019, "Classification is a strong baseline")."""
from __future__ import annotations

import argparse
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, positive_float

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import cosine_to, full_precision, row_stats


@REGISTRY.register("softmax")
class NormalizedSoftmaxCriterion(BaseCriterion):
    """CE over cos(x, w_c) / temperature, x and the class weights w L2-normalized; the weights
    learn with ``--loss_softmax_lr``."""

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_softmax_lr", default=0.00001, type=positive_float),
        Option("--loss_softmax_temperature", default=0.05, type=positive_float),
    )

    def __init__(self, num_classes: int, embed_dim: int, temperature: float = 0.05,
                 lr: float = 1e-5) -> None:
        super().__init__()
        self.class_weights = nn.Parameter(torch.empty(num_classes, embed_dim))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.class_weights, -bound, bound)
        self.temperature = temperature
        self.lr = lr

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "NormalizedSoftmaxCriterion":
        return cls(num_classes, opt.embed_dim, opt.loss_softmax_temperature, opt.loss_softmax_lr)

    def param_groups(self) -> List[dict]:
        return [{"params": [self.class_weights], "lr": self.lr}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        logits = cosine_to(embeddings, self.class_weights) / self.temperature
        self.stats = row_stats(len(labels), num_real, embeddings.device)
        return F.cross_entropy(logits, labels)
