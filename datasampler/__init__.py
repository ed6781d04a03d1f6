"""Batch samplers, selected with ``--data_sampler``. One file per sampler; see ``_base.py``."""
from __future__ import annotations

import numpy as np

from utilities.registry import Registry

from ._base import BaseBatchSampler

REGISTRY: Registry = Registry("data sampler", "--data_sampler")
REGISTRY.import_members(__name__, __path__)


def select(name: str, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
           rank: int = 0, world_size: int = 1, class_names=None,
           **member_options) -> BaseBatchSampler:
    """The sampler ``name``. ``member_options`` (e.g. ``super_labels``, ``num_super``) go to the
    samplers whose constructor takes them; the others ignore them."""
    import inspect  # only select() needs it

    member = REGISTRY.get(name)
    accepted = inspect.signature(member.__init__).parameters
    extra = {k: v for k, v in member_options.items() if k in accepted}
    return member(labels, batch_size, samples_per_class, seed=seed, rank=rank,
                  world_size=world_size, class_names=class_names, **extra)
