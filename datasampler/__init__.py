"""Batch samplers, selected with ``--data_sampler``. One file per sampler; see ``_base.py``."""
from __future__ import annotations

import numpy as np

from utilities.registry import Registry

from ._base import BaseBatchSampler

REGISTRY: Registry = Registry("data sampler", "--data_sampler")
REGISTRY.import_members(__name__, __path__)


def select(name: str, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
           rank: int = 0, world_size: int = 1, class_names=None) -> BaseBatchSampler:
    return REGISTRY.get(name)(labels, batch_size, samples_per_class, seed=seed, rank=rank,
                              world_size=world_size, class_names=class_names)
