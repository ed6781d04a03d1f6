"""``arcface``: additive angular margin softmax (Deng et al. 2019)."""
from __future__ import annotations

import argparse
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, between, positive_float

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import cosine_to, full_precision, row_stats


@REGISTRY.register("arcface")
class ArcFaceCriterion(BaseCriterion):
    """CE over scale x cos(theta_c), the own class's angle increased by the margin:
    cos(min(theta_y + m, pi)). Class weights learn with ``--loss_arcface_lr``. (Revisiting-DML
    clamps cosines to [1e-10, 1), which zeroes the gradient of every negative cosine; here they
    are clamped to (-1, 1) only, like the paper.)"""

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_arcface_lr", default=0.0005, type=positive_float),
        Option("--loss_arcface_angular_margin", default=0.5, type=between(0.0, 3.141592653589793)),
        Option("--loss_arcface_feature_scale", default=16, type=positive_float),
    )

    def __init__(self, num_classes: int, embed_dim: int, angular_margin: float = 0.5,
                 feature_scale: float = 16.0, lr: float = 0.0005) -> None:
        super().__init__()
        self.class_weights = nn.Parameter(torch.empty(num_classes, embed_dim))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.class_weights, -bound, bound)
        self.angular_margin = angular_margin
        self.feature_scale = feature_scale
        self.lr = lr

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "ArcFaceCriterion":
        return cls(num_classes, opt.embed_dim, opt.loss_arcface_angular_margin,
                   opt.loss_arcface_feature_scale, opt.loss_arcface_lr)

    def param_groups(self) -> List[dict]:
        return [{"params": [self.class_weights], "lr": self.lr}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        cosine = cosine_to(embeddings, self.class_weights)
        own = F.one_hot(labels, cosine.shape[1]).bool()
        angle = torch.acos(cosine.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7))
        with_margin = torch.cos((angle + self.angular_margin).clamp(max=math.pi))
        logits = torch.where(own, with_margin, cosine)
        self.stats = row_stats(len(labels), num_real, embeddings.device)
        return F.cross_entropy(self.feature_scale * logits, labels)
