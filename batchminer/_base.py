"""Base class shared by every batch miner."""
from __future__ import annotations

import argparse
from typing import ClassVar, Dict, Optional

import torch


class BaseMiner:
    """Selects tuples from a batch of embeddings.

    ``__call__(embeddings, labels, distances=None)`` returns index tensors on the embeddings'
    device; triplet-style miners return a ``LongTensor`` of shape ``(T, 3)`` holding
    (anchor, positive, negative) rows. ``distances`` lets a criterion pass the pairwise distance
    matrix it already computed, so it is computed once per step. Miners are vectorized: no Python
    loop over anchors, no host sync.
    """

    registry_name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.stats: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> "BaseMiner":
        """Build the miner from the parsed command line; miners without options need no
        override."""
        return cls()

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 distances: Optional[torch.Tensor] = None):
        raise NotImplementedError
