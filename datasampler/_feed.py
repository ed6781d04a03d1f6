"""Feeds the training-set embedding storage of samplers with ``needs_embeddings`` (coreset and
batch-match samplers, see datasampler/_storage.py).

- full refresh: the whole training set through the evaluation path
  (``evaluation.sharded_embeddings`` -> ``evaluation.compute_embeddings``: test transform, eval
  mode, batches of ``--eval_bs``), at the start of the first epoch, before every later epoch with
  ``--data_idx_full_prec``, and after every ``--data_storage_update_every`` global steps. It runs
  inside the epoch, so its time counts in ``epoch_time_s``.
- per step (unless ``--data_storage_no_update``): the step's global batch embeddings, captured by a
  forward hook on the network, are written at the batch's dataset indices.
Under torchrun rank 0 gathers the refreshed embeddings and broadcasts them, so every rank holds
the same storage and draws the same batches.
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.distributed as dist

from evaluation import sharded_embeddings
from utilities import distributed


class StorageFeed:
    def __init__(self, sampler, model: torch.nn.Module, dataset, device: torch.device,
                 batch_size: int, num_workers: int, update_every: int = 0,
                 refresh_each_epoch: bool = False, write_steps: bool = True) -> None:
        if update_every < 0:
            raise ValueError(f"--data_storage_update_every must be >= 0, got {update_every}")
        self.sampler, self.model, self.dataset, self.device = sampler, model, dataset, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self.update_every, self.refresh_each_epoch = update_every, refresh_each_epoch
        self.write_steps = write_steps
        self._captured: Optional[torch.Tensor] = None
        if write_steps:
            model.register_forward_hook(self._capture)

    @classmethod
    def for_sampler(cls, sampler, model, dataset, device, opt: argparse.Namespace
                    ) -> Optional["StorageFeed"]:
        """The feed of ``sampler``, or None when it keeps no storage."""
        if not getattr(sampler, "needs_embeddings", False):
            return None
        return cls(sampler, model, dataset, device, opt.eval_bs, opt.kernels,
                   update_every=opt.data_storage_update_every,
                   refresh_each_epoch=opt.data_idx_full_prec,
                   write_steps=not opt.data_storage_no_update)

    def _capture(self, module, inputs, output) -> None:
        if module.training:  # training forwards only; evaluation passes are not batches
            embeddings = output[0] if isinstance(output, tuple) else output
            self._captured = embeddings.detach()

    def refresh(self) -> None:
        embeddings, _ = sharded_embeddings(self.model, self.dataset, self.device,
                                           self.batch_size, self.num_workers)
        if distributed.is_distributed():
            holder = [embeddings]
            dist.broadcast_object_list(holder, src=0)
            embeddings = holder[0]
        self.sampler.refresh_storage(torch.from_numpy(embeddings).to(self.device))

    def epoch_start(self, epoch: int) -> None:
        """Call after ``sampler.set_epoch(epoch)``: fills the storage when empty, and refreshes it
        before each epoch after the first with --data_idx_full_prec (not when resuming
        mid-epoch: the checkpoint holds the storage of that moment)."""
        if self.sampler.storage is None:
            self.refresh()
        elif self.refresh_each_epoch and epoch > 0 and self.sampler.start_batch == 0:
            self.refresh()

    def after_step(self, indices: torch.Tensor, global_step: int) -> None:
        """After a training step: write its embeddings (``indices``: the local batch's dataset
        indices, as the loader yields them), refresh every --data_storage_update_every steps."""
        if self.write_steps and self._captured is not None:
            embeddings = self._captured.float()
            if distributed.is_distributed():  # the global batch, rank order (one sync there)
                embeddings, indices = distributed.gather_with_grad(
                    embeddings, indices.to(embeddings.device))
                indices = indices.cpu()
            self.sampler.update_storage(indices, embeddings)
            self._captured = None
        if self.update_every and global_step % self.update_every == 0:
            self.refresh()
