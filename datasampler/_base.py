"""Base class of the batch samplers: deterministic per (seed, epoch) and resumable mid-epoch."""
from __future__ import annotations

import argparse
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler

from utilities.options import Option


class BaseBatchSampler(Sampler[List[int]]):
    """Yields lists of dataset indices, one list per batch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same batches
    as an uninterrupted one; ``state_dict()`` records the epoch and how many batches were served.
    With ``world_size > 1`` every rank gets its own part of the same global batch.
    """

    registry_name = ""
    # Samplers that choose batches from embeddings of the training set (datasampler/_storage.py)
    # set this; main.py then feeds them through refresh_storage / update_storage.
    needs_embeddings = False
    # Its own --data_* options (storage samplers share theirs), collected by parameters.py.
    options: ClassVar[Tuple[Option, ...]] = ()

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"--bs must be a positive integer, got {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"--bs {batch_size} must be divisible by the number of processes "
                             f"({world_size})")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0  # batches of the current epoch already served (for resume)

    @classmethod
    def from_options(cls, opt: argparse.Namespace, labels: np.ndarray,
                     class_names: Optional[Sequence[str]] = None,
                     super_labels: Optional[np.ndarray] = None, rank: int = 0,
                     world_size: int = 1) -> "BaseBatchSampler":
        """Build the sampler for the training split (its ``labels``, ``class_names`` and, where
        the dataset has them, ``super_labels``) from the parsed command line: --bs,
        --samples_per_class and --seed here, the sampler's own options in ``own_arguments``."""
        return cls(labels, opt.bs, opt.samples_per_class, seed=opt.seed, rank=rank,
                   world_size=world_size, class_names=class_names,
                   **cls.own_arguments(opt, super_labels))

    @classmethod
    def own_arguments(cls, opt: argparse.Namespace,
                      super_labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """This sampler's constructor keywords beyond the common ones, from its own --data_*
        options (and the split's super-class labels, for a sampler that uses them). Samplers
        with options extend it."""
        return {}

    def check_class_groups(self, unit: str = "classes") -> None:
        """For samplers whose batches are groups of --samples_per_class rows of one class: the
        batch, and each process's share of it, must hold whole groups."""
        batch_size, per_class = self.batch_size, self.samples_per_class
        if per_class <= 0:
            raise ValueError(f"--samples_per_class must be positive, got {per_class}")
        if batch_size % per_class:
            raise ValueError(f"--bs {batch_size} is not divisible by --samples_per_class "
                             f"{per_class}: a {self.registry_name} batch holds bs / "
                             f"samples_per_class {unit}")
        if (batch_size // self.world_size) % per_class:
            raise ValueError(f"each of the {self.world_size} processes gets --bs / processes = "
                             f"{batch_size // self.world_size} images, which must be divisible "
                             f"by --samples_per_class {per_class}")

    def __len__(self) -> int:
        return max(len(self.labels) // self.batch_size, 1) - self.start_batch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.start_batch = int(state["epoch"]), int(state["start_batch"])

    def refresh_storage(self, embeddings: torch.Tensor) -> None:
        """Replace the whole storage with fresh ``(N, D)`` embeddings of the training set
        (in dataset order). Only for ``needs_embeddings`` samplers."""
        raise TypeError(f"--data_sampler {self.registry_name} keeps no embedding storage")

    def update_storage(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Write one training step's embeddings (rows of ``indices``) into the storage."""
        raise TypeError(f"--data_sampler {self.registry_name} keeps no embedding storage")

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        """All batches of one epoch, as index arrays of length batch_size."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self.global_batches(rng)
        local = self.batch_size // self.world_size
        for batch in batches[self.start_batch:]:
            yield batch[self.rank * local:(self.rank + 1) * local].tolist()
