"""Base class shared by every criterion."""
from __future__ import annotations

import argparse
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

import batchminer
from utilities.options import Option


class _AcceptedMiners:
    """``accepted_miners`` of a criterion class: the registered miners whose ``output`` is the
    criterion's ``miner_output`` (derived, so a new miner needs no list entry)."""

    def __get__(self, instance, owner) -> Tuple[str, ...]:
        return batchminer.returning(owner.miner_output) if owner.miner_output else ()


class BaseCriterion(nn.Module):
    """A loss on a batch of embeddings.

    ``forward(embeddings, labels, num_real)`` receives the real rows of the batch first, followed
    by any generated rows (DAS dense anchors); ``num_real`` says how many rows are real (``None``:
    all of them). Criteria fill ``self.stats`` with detached 0-d tensors (never ``.item()``) such as
    ``tuples`` and ``tuples_with_generated`` so the training loop can log, without a host sync on
    every step, how much of the mined signal involves generated rows.

    Class attributes declare how the criterion plugs in:
    ``requires_miner``: whether a batch miner picks its tuples; ``miner_output``: what that miner
    must return (``batchminer._base.TRIPLETS``, ...), from which ``accepted_miners`` (checked at
    start-up) follows; ``requires_normalized``: whether it expects L2-normalized embeddings;
    ``options``: its ``--loss_<name>_*`` options, collected by ``parameters.py``.
    """

    requires_miner: ClassVar[bool] = False
    miner_output: ClassVar[str] = ""
    accepted_miners = _AcceptedMiners()
    options: ClassVar[Tuple[Option, ...]] = ()
    requires_normalized: ClassVar[bool] = True
    registry_name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.stats: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_options(cls, opt: argparse.Namespace, num_classes: int, miner=None) -> "BaseCriterion":
        """Build the criterion from the parsed command line (each member reads its own options)."""
        raise NotImplementedError

    def param_groups(self) -> List[dict]:
        """Optimizer parameter groups (with their own learning rates) for learnable parameters."""
        return []

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        raise NotImplementedError
