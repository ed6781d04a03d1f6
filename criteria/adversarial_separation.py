"""``adversarial_separation``: triplet loss plus adversarial decorrelation of two embedding parts
(the "adversarial separation" of DiVA/MIC, Milbich et al. 2020, Roth et al. 2019)."""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utilities.options import Option, non_negative_float, positive_float, positive_int

from batchminer._base import TRIPLETS

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import full_precision, mine_triplets, row_differences, triplet_stats


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(tensor: torch.Tensor) -> torch.Tensor:
    return _ReverseGradient.apply(tensor)


@REGISTRY.register("adversarial_separation")
class AdversarialSeparationCriterion(BaseCriterion):
    """triplet loss (``--loss_triplet_margin``) on the whole embedding, plus
    -weight x mean_rows mean_dims (t * normalize(R(s)))^2, where s and t are the L2-normalized
    first and second halves of the embedding and R a two-layer regressor (``proj_dim`` hidden units,
    its own lr). Through a gradient-reversal layer R learns to predict t from s while the embedding
    learns to make the halves unpredictable from each other.

    In DiVA the separation acts between the embeddings of several heads; this codebase's backbones
    have one embedding, so its two halves play the heads.
    """

    requires_miner = True
    miner_output = TRIPLETS
    requires_normalized = True

    options = (
        Option("--loss_adversarial_separation_weight", default=1500, type=non_negative_float),
        Option("--loss_adversarial_separation_proj_dim", default=512, type=positive_int),
        Option("--loss_adversarial_separation_lr", default=0.0005, type=positive_float),
    )

    def __init__(self, miner, embed_dim: int, weight: float = 1500.0, proj_dim: int = 512,
                 lr: float = 0.0005, margin: float = 0.2) -> None:
        super().__init__()
        if embed_dim < 2:
            raise ValueError(f"adversarial_separation needs --embed_dim >= 2, got {embed_dim}")
        self.miner = miner
        self.weight = weight
        self.lr = lr
        self.margin = margin
        self.split = embed_dim // 2
        self.regressor = nn.Sequential(nn.Linear(self.split, proj_dim), nn.ReLU(),
                                       nn.Linear(proj_dim, embed_dim - self.split))

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "AdversarialSeparationCriterion":
        return cls(miner, opt.embed_dim, opt.loss_adversarial_separation_weight,
                   opt.loss_adversarial_separation_proj_dim, opt.loss_adversarial_separation_lr,
                   opt.loss_triplet_margin)

    def param_groups(self) -> List[dict]:
        return [{"params": list(self.regressor.parameters()), "lr": self.lr}]

    def separation(self, embeddings: torch.Tensor) -> torch.Tensor:
        """-mean (t * normalize(R(s)))^2: low when R predicts the second half from the first."""
        reversed_embeddings = reverse_gradient(embeddings)
        source = F.normalize(reversed_embeddings[:, :self.split], dim=1)
        target = F.normalize(reversed_embeddings[:, self.split:], dim=1)
        prediction = F.normalize(self.regressor(source), dim=1)
        return -(target * prediction).pow(2).mean()

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        triplets = mine_triplets(self.miner, embeddings, labels)
        anchors, positives, negatives = triplets.unbind(dim=1)
        d_ap = row_differences(embeddings, anchors, positives).norm(dim=1)
        d_an = row_differences(embeddings, anchors, negatives).norm(dim=1)
        triplet_losses = F.relu(d_ap - d_an + self.margin)
        separation = self.separation(embeddings)
        self.stats = triplet_stats(triplets, num_real, self.miner)
        self.stats["separation"] = separation.detach()
        return triplet_losses.sum() / max(len(triplets), 1) + self.weight * separation
