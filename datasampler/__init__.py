"""Batch samplers, selected with ``--data_sampler``. One file per sampler; see ``_base.py``."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import numpy as np

from utilities.registry import Registry

from ._base import BaseBatchSampler

REGISTRY: Registry = Registry("data sampler", "--data_sampler")
REGISTRY.import_members(__name__, __path__)


def select(name: str, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
           rank: int = 0, world_size: int = 1, class_names=None,
           **member_options) -> BaseBatchSampler:
    """The sampler ``name`` built from explicit arguments; ``member_options`` are keywords of its
    constructor (e.g. ``bigbs``, ``super_labels``, ``num_super``). Training builds it with
    ``from_options`` instead."""
    return REGISTRY.get(name)(labels, batch_size, samples_per_class, seed=seed, rank=rank,
                              world_size=world_size, class_names=class_names, **member_options)


def from_options(name: str, opt: argparse.Namespace, labels: np.ndarray,
                 class_names: Optional[Sequence[str]] = None,
                 super_labels: Optional[np.ndarray] = None, rank: int = 0,
                 world_size: int = 1) -> BaseBatchSampler:
    """The sampler ``name`` for the training split (its labels, class names, super-class labels),
    built from the parsed command line by the sampler itself (``BaseBatchSampler.from_options``)."""
    return REGISTRY.get(name).from_options(opt, labels, class_names=class_names,
                                           super_labels=super_labels, rank=rank,
                                           world_size=world_size)
