"""Batch miners, selected with ``--batch_mining``. One file per miner; see ``_base.py``."""
from __future__ import annotations

import argparse
from typing import Tuple

from utilities.registry import Registry

from ._base import BaseMiner

REGISTRY: Registry = Registry("batch miner", "--batch_mining")
REGISTRY.import_members(__name__, __path__)


# The order in which messages list miners (the published code's order). It decides nothing
# else: which criteria take a miner follows from the miner's ``output``. Members not named here
# are listed after these, by name.
LISTING_ORDER = ("random", "semihard", "softhard", "distance", "rho_distance", "npair",
                 "parametric", "lifted", "intra_random", "random_distance")


def returning(output: str) -> Tuple[str, ...]:
    """The names of the registered miners whose ``output`` is ``output``, in listing order."""
    names = [n for n in REGISTRY.names() if REGISTRY.get(n).output == output]
    rank = {name: i for i, name in enumerate(LISTING_ORDER)}
    return tuple(sorted(names, key=lambda n: (rank.get(n, len(rank)), n)))


def select(name: str, opt: argparse.Namespace) -> BaseMiner:
    return REGISTRY.get(name).from_options(opt)
