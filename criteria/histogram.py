"""``histogram``: histogram loss (Ustinova & Lempitsky 2016)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from utilities.options import Option, at_least

from . import REGISTRY
from ._base import BaseCriterion
from ._functional import full_precision, gram, label_masks, pair_stats


@REGISTRY.register("histogram")
class HistogramCriterion(BaseCriterion):
    """Soft histograms (linear interpolation onto ``num_bins`` nodes evenly spaced on [-1, 1]) of
    the cosine similarities of the positive and of the negative pairs (each unordered pair once);
    loss = sum_r h_neg[r] * cumsum(h_pos)[r], the probability that a random negative pair is more
    similar than a random positive one. Needs no miner."""

    requires_miner = False
    requires_normalized = True

    options = (
        Option("--loss_histogram_nbins", default=65, type=at_least(2)),
    )

    def __init__(self, num_bins: int = 65) -> None:
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"--loss_histogram_nbins must be at least 2, got {num_bins}")
        self.num_bins = num_bins
        self.step = 2.0 / (num_bins - 1)

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int,
                     miner=None) -> "HistogramCriterion":
        return cls(opt.loss_histogram_nbins)

    def soft_histogram(self, similarities: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Histogram over the nodes of the similarities where ``pairs``, normalized to sum 1."""
        position = (similarities.clamp(-1.0, 1.0) + 1.0) / self.step
        lower = position.detach().floor().clamp(max=self.num_bins - 2)
        upper_weight = (position - lower) * pairs
        lower_weight = (1.0 - (position - lower)) * pairs
        lower = lower.long()
        histogram = similarities.new_zeros(self.num_bins)
        histogram = histogram.scatter_add(0, lower.flatten(), lower_weight.flatten())
        histogram = histogram.scatter_add(0, (lower + 1).flatten(), upper_weight.flatten())
        return histogram / pairs.sum().clamp_min(1)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        similarities = gram(embeddings)
        positives, negatives = label_masks(labels)
        upper = torch.ones_like(positives).triu(diagonal=1)
        positives, negatives = positives & upper, negatives & upper
        positive_histogram = self.soft_histogram(similarities, positives)
        negative_histogram = self.soft_histogram(similarities, negatives)
        self.stats = pair_stats(positives | negatives, num_real)
        return (negative_histogram * positive_histogram.cumsum(dim=0)).sum()
