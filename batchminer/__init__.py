"""Batch miners, selected with ``--batch_mining``. One file per miner; see ``_base.py``."""
from __future__ import annotations

import argparse

from utilities.registry import Registry

from ._base import BaseMiner

REGISTRY: Registry = Registry("batch miner", "--batch_mining")
REGISTRY.import_members(__name__, __path__)


def select(name: str, opt: argparse.Namespace) -> BaseMiner:
    return REGISTRY.get(name).from_options(opt)
