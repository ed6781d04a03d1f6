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

FORMULATIONS = ("published", "paper")


@REGISTRY.register("arcface")
class ArcFaceCriterion(BaseCriterion):
    """Additive angular margin softmax; class weights learn with ``--loss_arcface_lr``.

    ``formulation='published'`` (default): the published loss takes c = clamp(x . w_c / |w_c|,
    1e-10, 1 - 1e-10) (the embeddings are already normalized) and adds the margin correction
    cos(theta_y + m) - cos(theta_y) of the own class to **every** logit of the row, where it
    cancels in the softmax: the loss is exactly cross-entropy over scale x c, without margin, and
    the clamp at 1e-10 zeroes the gradient of every negative cosine. It is computed in that form
    (the cancelling correction would only add acos's unbounded slope near c = 1).
    ``formulation='paper'`` (``--loss_arcface_formulation paper``): Deng et al. 2019, the margin
    on the own class's logit only, cos(min(theta_y + m, pi)), cosines clamped to (-1, 1), as
    pytorch-metric-learning's ArcFaceLoss. docs/PARITY.md has a worked example."""

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_arcface_lr", default=0.0005, type=positive_float),
        Option("--loss_arcface_angular_margin", default=0.5, type=between(0.0, 3.141592653589793)),
        Option("--loss_arcface_feature_scale", default=16, type=positive_float),
        Option("--loss_arcface_formulation", default="published", choices=["published", "paper"],
               help="arcface: 'published' (default) is what the published loss computes, "
                    "cross-entropy of the scaled clamped cosines (its margin cancels); 'paper' "
                    "puts the angular margin on the own class's logit. See docs/PARITY.md."),
    )

    def __init__(self, num_classes: int, embed_dim: int, angular_margin: float = 0.5,
                 feature_scale: float = 16.0, lr: float = 0.0005,
                 formulation: str = "published") -> None:
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"--loss_arcface_formulation: expected one of "
                             f"{', '.join(FORMULATIONS)}, got '{formulation}'")
        self.formulation = formulation
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
                   opt.loss_arcface_feature_scale, opt.loss_arcface_lr,
                   opt.loss_arcface_formulation)

    def param_groups(self) -> List[dict]:
        return [{"params": [self.class_weights], "lr": self.lr}]

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        self.stats = row_stats(len(labels), num_real, embeddings.device)
        if self.formulation == "published":
            cosine = embeddings @ F.normalize(self.class_weights, dim=1).T
            return F.cross_entropy(self.feature_scale * cosine.clamp(1e-10, 1.0 - 1e-10), labels)
        cosine = cosine_to(embeddings, self.class_weights)
        own = F.one_hot(labels, cosine.shape[1]).bool()
        angle = torch.acos(cosine.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7))
        with_margin = torch.cos((angle + self.angular_margin).clamp(max=math.pi))
        logits = torch.where(own, with_margin, cosine)
        return F.cross_entropy(self.feature_scale * logits, labels)
