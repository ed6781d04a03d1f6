"""One epoch of training and one round of evaluation: the loop main.py runs every epoch.

A step stays on the device: its figures are summed as device tensors (:class:`EpochStats`) and
non-finite values are flagged device-side; the host waits for the device only every
--log_every steps and at the end of an epoch.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

import evaluation
from datasets import QueryGallery
from parameters import RunSpec
from training.build import Training
from training.stops import StopRequest, TrainingError
from utilities import distributed
from utilities.grad_stats import gradient_norms
from utilities.seeding import set_backend_flags


class EpochStats:
    """Sums of per-step scalars kept as device tensors: no host sync until they are read."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, values: Dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.steps += 1

    def means(self) -> Dict[str, float]:
        return {key: (value / max(self.steps, 1)).item() for key, value in self.sums.items()}

    def state_dict(self) -> Dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "steps": self.steps}

    def load_state_dict(self, state: Dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.steps = int(state["steps"])


def bf16_autocast(spec: RunSpec, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: only with --amp, only on CUDA; the
    default is float32 as published (docs/PARITY.md)."""
    return device.type == "cuda" and spec.amp


def training_step(model, criterion, das, optimizer, images: torch.Tensor, labels: torch.Tensor,
                  device: torch.device, use_amp: bool, sec=None) -> torch.Tensor:
    """Forward, (gather across ranks), dense anchors, mining + loss (+ SEC), backward, update.

    Returns the loss as a device tensor (no host sync). Under torchrun the loss is that of the
    global batch on every rank, and the update equals a single process's on that batch.
    """
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    # use_amp (--amp): bf16 forward; otherwise float32 (TF32 matmuls on CUDA), as published.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        if sec is not None:  # SEC needs the norms before the L2 normalization
            embeddings, norms = model(images, return_norms=True)
        else:
            embeddings = model(images)
    local_labels = labels
    embeddings, labels = distributed.gather_with_grad(embeddings.float(), labels)
    if das is not None:
        loss = das.compute_loss(criterion, embeddings, labels)
    else:
        loss = criterion(embeddings, labels)
    if sec is not None:  # the global batch's norms, so SEC's running mean agrees on every rank
        norms, _ = distributed.gather_with_grad(norms.float(), local_labels)
        loss = loss + sec(norms)
    optimizer.zero_grad(set_to_none=True)
    (loss * distributed.loss_scale()).backward()
    optimizer.step()
    return loss


def step_scalars(training: Training, loss: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The figures of one step, as device tensors: loss, criterion, DAS and SEC statistics."""
    scalars = {"loss": loss.detach()}
    for prefix, member in (("criterion", training.criterion), ("das", training.das),
                           ("sec", training.sec)):
        if member is not None:
            scalars.update({f"{prefix}/{k}": v for k, v in member.stats.items()})
    return scalars


def train_one_epoch(training: Training, epoch: int, stats: EpochStats, writer,
                    stop: StopRequest, global_step: int) -> Tuple[int, bool]:
    """One pass over ``training.loader``. Returns the global step and whether it was stopped."""
    spec, device, model = training.opt, training.device, training.train_model
    model.train()
    use_amp = bf16_autocast(spec, device)
    if device.type == "cuda":  # --tf32 / --cudnn_deterministic (docs/PARITY.md); CPU: no effect
        set_backend_flags(tf32=spec.tf32, cudnn_deterministic=spec.cudnn_deterministic)
    batches = training.sampler  # its start_batch: the position in the epoch (resume)
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    bad_weights_step = torch.full((), -1, dtype=torch.long, device=device)
    weights = [p for p in list(model.parameters()) + list(training.criterion.parameters())
               if p.requires_grad]
    step = batches.start_batch - 1
    progress = tqdm(training.loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
                    disable=not distributed.is_main_process())
    for step, (images, labels, indices) in enumerate(progress, start=batches.start_batch):
        loss = training_step(model, training.criterion, training.das, training.optimizer, images,
                             labels, device, use_amp, sec=training.sec)
        if training.storage is not None:  # samplers choosing batches from stored embeddings
            training.storage.after_step(indices, global_step + 1)
        scalars = step_scalars(training, loss)
        stats.add(scalars)
        # masked_fill with a Python number: no host-to-device copy, so no sync on CUDA
        first_bad_step = first_bad_step.masked_fill(
            (first_bad_step < 0) & ~torch.isfinite(loss.detach()), step)
        global_step += 1
        batches.start_batch = step + 1
        if global_step % spec.log_every == 0 or stop.requested:
            # The one host sync of the step, every --log_every steps.
            bad_weights_step = mark_non_finite_weights(weights, bad_weights_step, step)
            raise_if_non_finite(first_bad_step, bad_weights_step, epoch)
            log_step(scalars, stats, model, progress, writer, global_step)
        if stop.requested:
            return global_step, True
    bad_weights_step = mark_non_finite_weights(weights, bad_weights_step, step)
    raise_if_non_finite(first_bad_step, bad_weights_step, epoch)
    return global_step, False


def log_step(scalars: Dict[str, torch.Tensor], stats: EpochStats, model: torch.nn.Module,
             progress, writer, global_step: int) -> None:
    """The step's figures and gradient norms (still held until the next zero_grad) on the
    progress bar and in TensorBoard (``step/...``)."""
    values = {k: v.item() for k, v in scalars.items()}
    values.update({k: v.item() for k, v in gradient_norms(model.parameters()).items()})
    running_loss = (stats.sums["loss"] / stats.steps).item()  # mean over the epoch so far
    progress.set_postfix(loss=f"{running_loss:.4f}", step_loss=f"{values['loss']:.4f}")
    if writer is not None:
        for key, value in values.items():
            writer.add_scalar(f"step/{key}", value, global_step)


def mark_non_finite_weights(weights: List[torch.Tensor], flag: torch.Tensor,
                            step: int) -> torch.Tensor:
    """``flag`` set to ``step`` if it is unset and a weight is NaN or infinite; device-side, no
    host sync (a step can leave the loss finite but the weights not, e.g. an exploding update)."""
    if not weights:
        return flag
    finite = torch.stack([torch.isfinite(w.detach()).all() for w in weights]).all()
    return flag.masked_fill((flag < 0) & ~finite, step)


def raise_if_non_finite(bad_loss_step: torch.Tensor, bad_weights_step: torch.Tensor,
                        epoch: int) -> None:
    """Stop naming the first step with a non-finite loss, or the check that found non-finite
    weights, before anything is evaluated or saved. Called only at logging points and at the end
    of an epoch: the first ``.item()`` waits for the device, the second finds it done."""
    bad_loss, bad_weights = bad_loss_step.item(), bad_weights_step.item()
    if bad_loss >= 0:
        raise TrainingError(f"non-finite loss at epoch {epoch}, step {bad_loss + 1}; the last good "
                            f"checkpoint is kept")
    if bad_weights >= 0:
        raise TrainingError(f"non-finite weights at epoch {epoch}, step {bad_weights + 1} (the "
                            f"loss was finite; weights are checked every --log_every steps and "
                            f"at the end of an epoch); the last good checkpoint is kept")


def evaluate_all(model, eval_sets, spec: RunSpec, device: torch.device, writer=None,
                 epoch: int = 0) -> Dict[str, float]:
    """Every evaluation split's scalar metrics (:func:`evaluation.evaluate`), keyed
    ``<split>/<metric>``; array metrics (``rho_spectrum@0``) go to ``writer`` as histograms at
    ``epoch``. Under torchrun rank 0 gets the figures, the other ranks an empty dict."""
    backend = evaluation.select_backend(spec.eval_backend, device)
    seed = evaluation.kmeans_seed(spec.kmeans_seed, spec.seed)
    results = {}
    for split_name, eval_set in eval_sets.items():
        values = evaluation.evaluate(model, eval_set, spec.evaluation_metrics, device,
                                     spec.eval_bs, spec.kernels,
                                     kmeans_iterations=spec.kmeans_iterations, seed=seed,
                                     backend=backend)
        if values is None:  # not rank 0
            continue
        for name, value in values.items():
            if not isinstance(value, np.ndarray):
                results[f"{split_name}/{name}"] = value
            elif writer is not None:
                writer.add_histogram(f"epoch/{split_name}/{name}", value, epoch)
        if isinstance(eval_set, QueryGallery):  # In-Shop
            results[f"{split_name}/queries_without_gallery"] = float(
                eval_set.queries_without_gallery())
    return results


def epoch_row(epoch: int, train_means: Dict[str, float], optimizer: torch.optim.Optimizer,
              epoch_time_s: float, results: Dict[str, float]) -> Dict[str, float]:
    """One row of metrics.csv: the epoch's mean training figures (``stats/...``) and its
    evaluation ``results``."""
    train_means = dict(train_means)
    row = {"epoch": epoch, "loss": train_means.pop("loss"),
           "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time_s}
    if "criterion/tuples_with_generated" in train_means:
        train_means["criterion/tuples_real_only"] = (
            train_means["criterion/tuples"] - train_means["criterion/tuples_with_generated"])
    row.update({f"stats/{k}": v for k, v in train_means.items()})
    row.update(results)
    return row


def format_results(results: Dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in results.items())
