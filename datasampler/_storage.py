"""Base class of the samplers that choose batches from a storage of training-set embeddings
(``d2_coreset``, ``greedy_coreset``, ``disthist_batchmatch``, ``fid_batchmatch``).

Published semantics (DAS / Revisiting-DML ``datasampler/*_coreset_sampler.py`` and
``*_batchmatch_sampler.py``, fed by ``scripts/_share.py``): the storage holds one embedding per
training image, computed with the evaluation path before training; every training step writes
its batch's embeddings into it (unless ``--data_storage_no_update``); all batches of an epoch are
chosen at the start of that epoch from the storage as it is then. Here the choice is drawn with
``numpy.random.default_rng([seed, epoch])``, so an epoch's batches are a function of (seed, epoch,
storage); the storage and the epoch's batches are part of ``state_dict()``, so a run resumed
mid-epoch continues with the same batches and the same storage.

Full refreshes (``refresh_storage``) replace the storage; with ``--data_mb_mom m > 0`` they move it
with momentum instead (published ``full_storage_update``): ``delta = m delta + (1 - m)(new - old)``,
``storage = new + data_mb_lr * delta``.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from utilities.options import (Option, Range, at_least, non_negative_int, positive_float,
                               positive_int)

from ._base import BaseBatchSampler


class StorageBatchSampler(BaseBatchSampler):
    """Common storage, per-class lookup and resume logic; subclasses implement ``draw_batch`` and
    add their own checks of the arguments in ``check_arguments``."""

    needs_embeddings = True

    options = (
        Option("--data_batchmatch_bigbs", default=512, type=positive_int,
               help="Coreset / batch-match samplers: size of the big batch a batch is chosen "
                    "from."),
        Option("--data_batchmatch_ncomps", default=10, type=positive_int,
               help="Batch-match samplers: candidate batches compared per batch."),
        Option("--data_storage_no_update", action="store_true",
               help="Storage samplers: do not replace storage entries with each step's "
                    "embeddings."),
        Option("--data_storage_update_every", default=0, type=non_negative_int,
               help="Storage samplers: recompute the whole storage every N steps (0: only at the "
                    "start of every epoch after the first, with --data_idx_full_prec, as "
                    "published)."),
        Option("--data_idx_full_prec", action="store_true",
               help="Storage samplers: recompute the whole storage before every epoch."),
        Option("--data_sampler_lowproj_dim", default=-1, type=at_least(1, also=(-1,)),
               help="Coreset / batch-match samplers: random linear projection of the storage to "
                    "this dimension first (-1: none)."),
        Option("--data_sim_measure", default="euclidean", choices=["euclidean"],
               help="Distance of the coreset / batch-match samplers (published: only euclidean)."),
        Option("--data_mb_mom", default=-1, type=Range(float, low=0.0, high=1.0, also=(-1,)),
               help="Storage samplers: momentum of full storage updates (-1: replace)."),
        Option("--data_mb_lr", default=1, type=positive_float,
               help="Storage samplers: step on the momentum term of --data_mb_mom."),
    )

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, class_names=None, bigbs: int = 512,
                 ncomps: int = 10, lowproj_dim: int = -1, mb_mom: float = -1.0,
                 mb_lr: float = 1.0) -> None:
        super().__init__(labels, batch_size, samples_per_class, seed, rank, world_size)
        self.check_class_groups("class groups")
        if bigbs <= 0:
            raise ValueError(f"--data_batchmatch_bigbs must be positive, got {bigbs}")
        if ncomps <= 0:
            raise ValueError(f"--data_batchmatch_ncomps must be positive, got {ncomps}")
        if lowproj_dim == 0 or lowproj_dim < -1:
            raise ValueError(f"--data_sampler_lowproj_dim must be positive or -1 (no projection), "
                             f"got {lowproj_dim}")
        self.groups_per_batch = batch_size // samples_per_class
        self.bigbs, self.ncomps, self.lowproj_dim = bigbs, ncomps, lowproj_dim
        self.mb_mom, self.mb_lr = mb_mom, mb_lr
        order = np.argsort(self.labels, kind="stable")
        self._classes, self._starts, self._counts = np.unique(
            self.labels[order], return_index=True, return_counts=True)
        self._order = order
        self._class_of = np.searchsorted(self._classes, self.labels)  # image -> class position
        self.storage: Optional[torch.Tensor] = None
        self.delta: Optional[torch.Tensor] = None
        self._batches: Optional[torch.Tensor] = None  # (n_batches, bs) of epoch self._batches_epoch
        self._batches_epoch = -1
        self.check_arguments()

    @classmethod
    def own_arguments(cls, opt: argparse.Namespace,
                      super_labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
        return dict(super().own_arguments(opt, super_labels), bigbs=opt.data_batchmatch_bigbs,
                    ncomps=opt.data_batchmatch_ncomps, lowproj_dim=opt.data_sampler_lowproj_dim,
                    mb_mom=opt.data_mb_mom, mb_lr=opt.data_mb_lr)

    def check_arguments(self) -> None:
        """A subclass's own refusals of impossible settings, run at the end of ``__init__``
        (the common ones are checked before)."""

    # -------------------------------------------------------------------- storage
    def refresh_storage(self, embeddings: torch.Tensor) -> None:
        embeddings = torch.as_tensor(embeddings).detach().float()
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.labels):
            raise ValueError(f"{self.registry_name}: the storage needs ({len(self.labels)}, dim) "
                             f"embeddings, one per training image, got {tuple(embeddings.shape)}")
        if self.storage is not None and self.mb_mom > 0:
            old = self.storage.to(embeddings.device)
            delta = torch.zeros_like(old) if self.delta is None else self.delta.to(old.device)
            self.delta = self.mb_mom * delta + (1 - self.mb_mom) * (embeddings - old)
            self.storage = embeddings + self.mb_lr * self.delta
        else:
            self.storage = embeddings.clone()

    def update_storage(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Rows ``indices`` get ``embeddings`` (an index drawn twice keeps its last row). Stays on
        the embeddings' device: no host synchronisation in a training step."""
        if self.storage is None:
            raise RuntimeError(f"{self.registry_name}: update_storage before refresh_storage")
        if self.storage.device != embeddings.device:
            self.storage = self.storage.to(embeddings.device)
        indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)  # CPU loader output
        # last occurrence of every index: unique over the reversed array
        _, last_from_end = np.unique(indices[::-1], return_index=True)
        rows = len(indices) - 1 - last_from_end
        rows_t = torch.from_numpy(rows).to(embeddings.device, non_blocking=True)
        index_t = torch.from_numpy(indices[rows]).to(embeddings.device, non_blocking=True)
        self.storage[index_t] = embeddings.detach().float()[rows_t]

    # -------------------------------------------------------------------- epochs and resume
    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if epoch != self._batches_epoch:
            self._batches, self._batches_epoch = None, -1

    def state_dict(self) -> Dict:
        state = dict(super().state_dict())
        state["storage"] = self.storage.cpu() if self.storage is not None else None
        state["delta"] = self.delta.cpu() if self.delta is not None else None
        state["batches"] = self._batches
        state["batches_epoch"] = self._batches_epoch
        return state

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.storage, self.delta = state.get("storage"), state.get("delta")
        self._batches = state.get("batches")
        self._batches_epoch = int(state.get("batches_epoch", -1))

    def global_batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        if self.storage is None:
            raise RuntimeError(f"{self.registry_name}: batches drawn before the storage was filled")
        storage = self.storage.cpu().double().numpy()
        n_batches = max(len(self.labels) // self.batch_size, 1)
        # per batch (each one a selection over its own big batch), not per sample
        return [self.draw_batch(rng, storage) for _ in range(n_batches)]

    def __iter__(self) -> Iterator[List[int]]:
        if self._batches is None or self._batches_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._batches = torch.from_numpy(np.stack(self.global_batches(rng)).astype(np.int64))
            self._batches_epoch = self.epoch
        local = self.batch_size // self.world_size
        for batch in self._batches[self.start_batch:]:
            yield batch[self.rank * local:(self.rank + 1) * local].tolist()

    # -------------------------------------------------------------------- shared pieces
    def draw_batch(self, rng: np.random.Generator, storage: np.ndarray) -> np.ndarray:
        """One global batch of ``batch_size`` dataset indices, class groups contiguous."""
        raise NotImplementedError

    def project(self, rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
        """``--data_sampler_lowproj_dim``: a fresh random linear map without bias, entries
        uniform in +-1/sqrt(D) (the published ``nn.Linear`` default initialisation)."""
        if self.lowproj_dim <= 0:
            return points
        bound = 1.0 / np.sqrt(points.shape[1])
        weight = rng.uniform(-bound, bound, size=(points.shape[1], self.lowproj_dim))
        return points @ weight

    def fill_groups(self, rng: np.random.Generator, anchors: np.ndarray) -> np.ndarray:
        """Coreset samplers: each anchor image plus samples_per_class - 1 images of its class
        drawn uniformly with replacement (published per-class fillers)."""
        classes = self._class_of[anchors]
        offsets = np.floor(rng.random((len(anchors), self.samples_per_class - 1))
                           * self._counts[classes][:, None]).astype(np.int64)
        fillers = self._order[self._starts[classes][:, None] + offsets]
        return np.concatenate([anchors[:, None], fillers], axis=1).reshape(-1)

    def class_balanced_bigbatch(self, rng: np.random.Generator) -> np.ndarray:
        """Batch-match samplers' big batch: bigbs / samples_per_class classes drawn uniformly with
        replacement, samples_per_class images of each uniformly with replacement (published
        ``spc_batchfinder``). Returns ``(draws, samples_per_class)`` dataset indices."""
        draws = self.bigbs // self.samples_per_class
        classes = rng.integers(0, len(self._counts), size=draws)
        offsets = np.floor(rng.random((draws, self.samples_per_class))
                           * self._counts[classes][:, None]).astype(np.int64)
        return self._order[self._starts[classes][:, None] + offsets]

    def candidate_subsets(self, rng: np.random.Generator, big: np.ndarray) -> np.ndarray:
        """Batch-match candidates: ``ncomps`` batches of bs / samples_per_class class draws, each
        a class present in the big batch drawn uniformly, then samples_per_class of that class's
        big-batch positions without replacement (a uniformly random subset: the first ones of a
        random order). Returns positions in the flattened big batch, ``(ncomps, bs)``."""
        spc = self.samples_per_class
        class_of_draw = self._class_of[big[:, 0]]
        present, draw_class = np.unique(class_of_draw, return_inverse=True)
        # positions of every present class in the flattened big batch, padded with -1
        counts = np.bincount(draw_class, minlength=len(present)) * spc
        positions = np.full((len(present), counts.max()), -1, dtype=np.int64)
        by_class = np.argsort(np.repeat(draw_class, spc), kind="stable")
        slot = np.arange(len(by_class)) - np.repeat(np.cumsum(counts) - counts, counts)
        positions[np.repeat(np.arange(len(present)), counts), slot] = by_class
        chosen = rng.integers(0, len(present), size=(self.ncomps, self.groups_per_batch))
        keys = rng.random((self.ncomps, self.groups_per_batch, positions.shape[1]))
        keys[positions[chosen] < 0] = np.inf  # padding never chosen
        first = np.argsort(keys, axis=-1, kind="stable")[..., :spc]
        picked = np.take_along_axis(positions[chosen], first, axis=-1)
        return picked.reshape(self.ncomps, self.batch_size)

    def check_big_batch(self) -> None:
        if self.bigbs < self.samples_per_class:
            raise ValueError(f"--data_batchmatch_bigbs {self.bigbs} must hold at least one class "
                             f"group of --samples_per_class {self.samples_per_class} images")

    def check_candidates(self) -> None:
        if self.bigbs > len(self.labels):
            raise ValueError(f"--data_batchmatch_bigbs {self.bigbs} exceeds the "
                             f"{len(self.labels)} training images ({self.registry_name} draws its "
                             f"candidates without replacement)")
        if self.bigbs < self.groups_per_batch:
            raise ValueError(f"--data_batchmatch_bigbs {self.bigbs} is smaller than the "
                             f"{self.groups_per_batch} class groups of a batch")


def squared_distances(points: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (bigbs x bigbs), clipped at 0 like the published
    expansion ||a||^2 + ||b||^2 - 2ab."""
    norms = np.einsum("ij,ij->i", points, points)
    return np.clip(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0, None)
