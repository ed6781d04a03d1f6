"""Spherical Embedding Constraint (SEC; Zhang et al., "Deep Metric Learning with Spherical
Embedding", NeurIPS 2020), as the published DAS code uses it (``--sec``): a term added to the
criterion's loss, on the embedding norms before the L2 normalization.

With n_i the L2 norm of row i's embedding *before* normalization and mu a running mean of the
norms, the penalty is

    L_sec = mean_i (n_i - mu)^2,        mu <- m * mu + (1 - m) * mean_i n_i   (mu <- mean on step 1)

with m = ``--sec_momentum``; mu is updated from the batch (without gradient) *before* the
penalty is taken, as in the published module, and the training loss becomes
L + ``--sec_wei`` * L_sec. Under torchrun the norms of the whole global batch are passed (the
training step gathers them like the embeddings), so mu is the same on every rank.

mu lives in buffers (``norm_mean``, ``initialized``), so it is saved in checkpoints, restored on
resume and moved by ``.to(device)``; the update is tensor code without host syncs.
"""
from __future__ import annotations

import argparse
from typing import Dict, Optional

import torch
from torch import nn

from utilities.options import Option, add_declared, between, non_negative_float


OPTIONS = (
    Option("--sec", action="store_true",
           help="Add the spherical embedding constraint to the loss (criteria/_sec.py)."),
    Option("--sec_wei", default=0.01, type=non_negative_float, help="Weight of the SEC penalty."),
    Option("--sec_momentum", default=0.999, type=between(0.0, 1.0),
           help="Momentum of SEC's running mean of the embedding norms."),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    add_declared(parser.add_argument_group("SEC (spherical embedding constraint)"), OPTIONS)


class SphericalEmbeddingConstraint(nn.Module):
    def __init__(self, weight: float = 0.01, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"--sec_momentum must lie in [0, 1], got {momentum}")
        if not weight >= 0.0:
            raise ValueError(f"--sec_wei must be non-negative, got {weight}")
        self.weight = float(weight)
        self.momentum = float(momentum)
        self.register_buffer("norm_mean", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.stats: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> Optional["SphericalEmbeddingConstraint"]:
        """The SEC of ``--sec`` (None when off)."""
        if not getattr(opt, "sec", False):
            return None
        return cls(weight=opt.sec_wei, momentum=opt.sec_momentum)

    def forward(self, norms: torch.Tensor) -> torch.Tensor:
        """Update the running mean with ``norms`` (B,) and return the weighted penalty
        ``weight * mean((norms - mu)^2)``."""
        norms = norms.float()
        batch_mean = norms.detach().mean()
        updated = self.momentum * self.norm_mean + (1.0 - self.momentum) * batch_mean
        self.norm_mean.copy_(torch.where(self.initialized, updated, batch_mean))
        self.initialized.fill_(True)
        penalty = (norms - self.norm_mean).pow(2).mean()
        self.stats = {"loss": penalty.detach(), "norm_mean": self.norm_mean.clone()}
        return self.weight * penalty
