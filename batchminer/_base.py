"""Base class shared by every batch miner."""
from __future__ import annotations

import argparse
from typing import ClassVar, Dict, Optional, Tuple

import torch

from utilities.options import Option

# What a miner returns (its ``output``); a criterion names the output it consumes
# (``miner_output``) and accepts every miner returning it.
TRIPLETS = "triplets"  # LongTensor (T, 3) of (anchor, positive, negative) rows
NPAIR_TUPLES = "npair_tuples"  # (anchors, one positive each, negatives mask): batchminer/npair.py
ANCHOR_SETS = "anchor_sets"  # (anchors, positives mask, negatives mask): batchminer/lifted.py


class BaseMiner:
    """Selects tuples from a batch of embeddings.

    ``__call__(embeddings, labels, distances=None)`` returns index tensors on the embeddings'
    device; triplet-style miners (``output = TRIPLETS``) return a ``LongTensor`` of shape
    ``(T, 3)`` holding (anchor, positive, negative) rows. ``distances`` lets a criterion pass the
    pairwise distance matrix it already computed, so it is computed once per step. Miners are
    vectorized: no Python loop over anchors, no host sync.
    """

    registry_name: ClassVar[str] = ""
    output: ClassVar[str] = ""  # what __call__ returns: TRIPLETS, NPAIR_TUPLES or ANCHOR_SETS
    options: ClassVar[Tuple[Option, ...]] = ()  # its --miner_* options, collected by parameters.py

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
