"""Criteria (losses), selected with ``--loss``. One file per criterion; see ``_base.py``."""
from __future__ import annotations

import argparse

from utilities.registry import Registry

from ._base import BaseCriterion
from ._sec import SphericalEmbeddingConstraint  # noqa: F401  (a loss add-on, see there)

REGISTRY: Registry = Registry("criterion", "--loss")
REGISTRY.import_members(__name__, __path__)


def select(name: str, opt: argparse.Namespace, num_classes: int, miner=None) -> BaseCriterion:
    """Build criterion ``name``; refuses a miner it does not accept, listing the accepted ones."""
    criterion_class = REGISTRY.get(name)
    if criterion_class.requires_miner:
        if miner is None:
            raise ValueError(f"criterion '{name}' needs a batch miner (--batch_mining); accepted: "
                             f"{', '.join(criterion_class.accepted_miners)}")
        if miner.registry_name not in criterion_class.accepted_miners:
            raise ValueError(
                f"criterion '{name}' does not accept --batch_mining {miner.registry_name}; "
                f"accepted: {', '.join(criterion_class.accepted_miners)}")
    return criterion_class.from_options(opt, num_classes=num_classes,
                                        miner=miner if criterion_class.requires_miner else None)
