"""Train and evaluate a deep metric learning model, optionally with densely-anchored sampling.

    python main.py                                   # bundled Omniglot default, minutes on a CPU
    python main.py --dataset cub200 --source DATA --loss multisimilarity \
        --arch resnet50_double_frozen_normalize --embed_dim 512 \
        --embedding_producer_used --produce_type DAS --das_dfs_num_scale 8

Reads top to bottom: options -> data -> network -> miner/criterion/DAS -> optimizer -> run folder
-> (resume) -> epochs of training and evaluation -> summary. See README.md for every option.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import architectures
import batchminer
import criteria
import das as dense_anchors
import datasampler
import datasets
import evaluation
import metrics
from datasampler._feed import StorageFeed
from datasets import DataError, ImageDataset, QueryGallery, device_decoding, image_dataset
from datasets._batch import evaluation_decode
from parameters import (RunSpec, build_parser, parse_command_line, resolve_dataset_defaults,
                        resume_overridable)
from utilities import checkpoint as ckpt
from utilities import distributed
from utilities import run_folder as rf
from utilities.data import SeededBatches, SeededDataset
from utilities.errors import UserError, resume_hint
from utilities.grad_stats import gradient_norms
from utilities.options import ConfigError, option_name
from utilities.registry import UnknownNameError
from utilities.schedulers import make_scheduler
from utilities.seeding import rng_state, seed_everything, set_backend_flags, set_rng_state

# see run(): ValueErrors before "finished" are bad input; folder and kernels for its messages
SETUP = {"finished": False, "folder": "", "kernels": 0}

# Options a --resume may give with a new value (parameters.resume_overridable).
RESUME_OVERRIDABLE = resume_overridable()


class TrainingError(RuntimeError):
    """A failure during training that deserves a one-line message (e.g. a non-finite loss)."""


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag: the current step finishes, a checkpoint is saved.

    A second signal stops at once (KeyboardInterrupt, reported in one line by run()), except
    during a checkpoint save (:meth:`saving`): the save finishes, then the run exits."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.in_save = False
        self.exit_after_save = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.in_save:  # never leave a save half done: exit right after it
                self.exit_after_save = True
                return
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def saving(self):
        self.in_save = True
        try:
            yield
        finally:
            self.in_save = False


# ----------------------------------------------------------------------------- set-up helpers
def validate_options(opt: argparse.Namespace, given: Optional[Dict] = None) -> None:
    """Checks between options and against the registries, before any data is read. The range
    of each single option is declared with it in parameters.py and checked by argparse (and by
    check_saved_options on resume); ``given``: the options typed on the command line."""
    given = given or {}
    datasets.REGISTRY.get(opt.dataset)
    datasampler.REGISTRY.get(opt.data_sampler)
    architectures.REGISTRY.get(architectures.parse_arch(opt.arch).backbone)
    criterion_class = criteria.REGISTRY.get(opt.loss)
    batchminer.REGISTRY.get(opt.batch_mining)  # also when the criterion takes no miner
    if criterion_class.requires_miner and opt.batch_mining not in criterion_class.accepted_miners:
        raise ValueError(f"criterion '{opt.loss}' does not accept --batch_mining "
                         f"{opt.batch_mining}; accepted: "
                         f"{', '.join(criterion_class.accepted_miners)}")
    metrics.select_all(opt.evaluation_metrics)  # unknown names stop here, listing the valid ones
    if opt.storage_metric not in opt.evaluation_metrics:
        raise ValueError(f"--storage_metric {opt.storage_metric} selects checkpoint_best.pth but "
                         f"is not among --evaluation_metrics ({' '.join(opt.evaluation_metrics)})")
    if not metrics.select(opt.storage_metric).scalar:
        raise ValueError(f"--storage_metric {opt.storage_metric} is an array (logged as a "
                         f"histogram), not a figure that can select checkpoint_best.pth")
    dense_anchors.check_options(opt, given)
    late = [epoch for epoch in getattr(opt, "das_save_frequency_epochs", None) or []
            if epoch > opt.n_epochs]
    if late:
        raise ValueError(f"--das_save_frequency_epochs {' '.join(map(str, late))} lies beyond "
                         f"--n_epochs {opt.n_epochs}: that counter would never be saved; choose "
                         f"epochs from 1 to {opt.n_epochs}")
    check_batch_fits_in_memory(opt)
    if not opt.resume:
        rf.new_run_base(opt.save_path, opt.savename)  # not inside an existing run folder


def machine_memory_bytes() -> int:
    """Physical memory of this machine (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_batch_fits_in_memory(opt: argparse.Namespace) -> None:
    """Refuse, before any data is read, a --bs/--eval_bs at --crop_size whose float32 input
    batch alone takes more than a quarter of this machine's memory (the network's activations
    need many times more): otherwise the run dies in the allocator after loading the data."""
    memory = machine_memory_bytes()
    if not memory:
        return
    for flag, batch in (("--bs", opt.bs), ("--eval_bs", opt.eval_bs)):
        needed = batch * 3 * opt.crop_size ** 2 * 4
        if needed > memory // 4:
            raise ValueError(f"{flag} {batch} at --crop_size {opt.crop_size} needs "
                             f"{needed / 2**30:.1f} GiB for one batch of input images alone, more "
                             f"than a quarter of this machine's {memory / 2**30:.1f} GiB; lower "
                             f"{flag} or --crop_size")


def validate_data(opt: argparse.Namespace, splits: datasets.DatasetSplits) -> None:
    """Checks that need the data: every evaluation split must hold two classes or more."""
    for name, split in splits.evaluation.items():
        if isinstance(split, QueryGallery):  # In-Shop: checked by its parser
            continue
        if split.num_classes < 2:
            if name == "val":
                raise ValueError(f"--use_tv_split with --tv_split_perc {opt.tv_split_perc} leaves "
                                 f"{split.num_classes} validation class; retrieval metrics need "
                                 f"at least 2: lower --tv_split_perc")
            raise ValueError(f"the {name} split holds {split.num_classes} class; retrieval "
                             f"metrics need at least 2")


def choose_device(opt: argparse.Namespace) -> torch.device:
    if opt.device:
        device = torch.device(opt.device)  # cpu or cuda[:N], checked by the option's type
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {opt.device} asked for CUDA, but no CUDA device is "
                             f"available")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {opt.device} does not exist; {torch.cuda.device_count()} "
                             f"CUDA device(s) are visible")
        return device
    if distributed.is_distributed():
        return distributed.local_device()
    if torch.cuda.is_available():
        gpu = opt.gpu[0]
        if gpu >= torch.cuda.device_count():
            raise ValueError(f"--gpu {gpu} does not exist; {torch.cuda.device_count()} CUDA "
                             f"device(s) are visible")
        return torch.device(f"cuda:{gpu}")
    return torch.device("cpu")


def make_optimizer(opt: argparse.Namespace, model: architectures.EmbeddingNetwork,
                   criterion: criteria.BaseCriterion) -> torch.optim.Optimizer:
    """Parameter groups as the published code builds them (scripts/standard.py): the network
    (backbone at --lr, embedding layer at --fc_lr) with weight decay --decay (--layer_decay:
    the backbone's layers at decaying rates, timm backbones); the criterion's
    learnable parameters at their own lr with the weight decay their loss defines (proxyanchor:
    --loss_proxyanchor_decay) and otherwise none of ours, so the optimizer's own default applies
    (0 for Adam and SGD, torch's 0.01 for AdamW). No global weight decay: decaying e.g. the margin
    loss's beta would pull it to 0 on every step its class is absent (docs/PARITY.md)."""
    fc_lr = opt.fc_lr if opt.fc_lr > 0 else opt.lr
    layer_decay = getattr(opt, "layer_decay", 1.0)  # configs saved before the option: off
    if layer_decay != 1.0:  # --layer_decay: one group per layer of a timm backbone
        groups = architectures.layer_decay_groups(model, opt.lr, opt.decay, layer_decay)
    else:
        groups = [{"params": list(model.backbone_parameters()), "lr": opt.lr,
                   "weight_decay": opt.decay, "name": "backbone"}]
    groups += [
        {"params": list(model.embedding_parameters()), "lr": fc_lr, "weight_decay": opt.decay,
         "name": "embedding"},
    ]
    groups += [dict(group, name=group.get("name", f"criterion_{i}"))
               for i, group in enumerate(criterion.param_groups())]
    if opt.optim == "adam":
        return torch.optim.Adam(groups, lr=opt.lr)
    if opt.optim == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=0.9)


def build_criterion(opt: argparse.Namespace, num_classes: int) -> criteria.BaseCriterion:
    """The criterion of --loss, with the --batch_mining miner when it takes one."""
    criterion_class = criteria.REGISTRY.get(opt.loss)
    miner = batchminer.select(opt.batch_mining, opt) if criterion_class.requires_miner else None
    return criteria.select(opt.loss, opt, num_classes=num_classes, miner=miner)


def make_train_loader(train_set: ImageDataset, sampler: datasampler.BaseBatchSampler,
                      opt: argparse.Namespace, device: torch.device) -> DataLoader:
    """Training batches from ``sampler``, each image augmented with its own seed."""
    encoded = hasattr(train_set, "batch_decoder")  # --decode gpu: bytes, decoded on the device
    loader = DataLoader(SeededDataset(train_set), batch_sampler=SeededBatches(sampler, opt.seed),
                        num_workers=opt.kernels, pin_memory=device.type == "cuda" and not encoded,
                        persistent_workers=opt.kernels > 0,
                        collate_fn=getattr(train_set, "collate_fn", None),
                        # its own generator: creating a loader iterator must not consume the
                        # global RNG, or a resumed run would draw differently afterwards
                        generator=torch.Generator().manual_seed(opt.seed))
    return device_decoding(loader, train_set, device)


def command_line_options(argv: Optional[List[str]]) -> Tuple[argparse.Namespace, Dict]:
    """The run's options and the ones typed: parsed once; for --resume, the saved ones."""
    cli, given = parse_command_line(argv)
    if cli.resume is None:
        return resolve_dataset_defaults(cli), given
    return resume_options(cli.resume, given), {}


def resume_options(folder: str, given: Dict) -> argparse.Namespace:
    """For --resume: the saved configuration, checked, with the options of RESUME_OVERRIDABLE
    taken from the command line. Any other option given with a value other than the saved one
    is refused, naming it. Locks the run folder first (rank 0)."""
    if not os.path.isdir(folder):
        raise ckpt.CheckpointError(f"--resume '{folder}' is not a run folder")
    if not os.path.isfile(os.path.join(folder, rf.LAST_CHECKPOINT)):
        raise ckpt.CheckpointError(f"--resume '{folder}' holds no {rf.LAST_CHECKPOINT} to continue "
                                   f"from")
    if distributed.is_main_process():
        rf.lock_run_folder(folder)
    saved = RunSpec.load(folder)
    config = saved.to_config()
    names = {action.dest: option_name(action) for action in build_parser()._actions}
    refused = [f"{names[dest]} {value!r} (the run has {config.get(dest)!r})"
               for dest, value in given.items()
               if dest not in RESUME_OVERRIDABLE + ("resume",) and value != config.get(dest)]
    if refused:
        raise ValueError(f"--resume continues '{folder}' with its saved options; refused: "
                         f"{'; '.join(refused)}. Only "
                         f"{', '.join('--' + d for d in RESUME_OVERRIDABLE)} may change on resume; "
                         f"start a new run for other settings")
    for dest in RESUME_OVERRIDABLE:
        if dest in given:
            setattr(saved, dest, given[dest])
    saved.resume = folder
    return saved


@dataclass
class Training:
    """What one training run trains with, built by :func:`build_training` (main, resume, the
    bench and the tools share it); :func:`train_one_epoch` takes it whole."""

    opt: argparse.Namespace
    device: torch.device
    num_classes: int
    model: architectures.EmbeddingNetwork  # the network (state dict, evaluation)
    train_model: torch.nn.Module  # what a step calls: DDP-wrapped, torch.compile'd
    criterion: criteria.BaseCriterion  # with its --batch_mining miner
    das: Optional[torch.nn.Module]  # dense anchors (--embedding_producer_used), else None
    sec: Optional[torch.nn.Module]  # spherical embedding constraint (--sec), else None
    optimizer: torch.optim.Optimizer
    scheduler: object
    splits: Optional[datasets.DatasetSplits] = None
    sampler: Optional[datasampler.BaseBatchSampler] = None  # its start_batch: the resume position
    loader: Optional[object] = None
    eval_sets: Dict[str, object] = field(default_factory=dict)
    storage: Optional[StorageFeed] = None  # training-set embeddings of a storage sampler

    @property
    def selection_key(self) -> str:
        """``<split>/<--storage_metric>`` that selects checkpoint_best.pth (val when present)."""
        return f"{'val' if 'val' in self.eval_sets else 'test'}/{self.opt.storage_metric}"


def build_learner(opt: argparse.Namespace, num_classes: int, device: torch.device,
                  pretrained: Optional[bool] = None) -> Training:
    """Network, miner + criterion, DAS, SEC, optimizer and scheduler on ``device`` (no data)."""
    model = architectures.select(opt.arch, opt.embed_dim,
                                 pretrained=opt.pretrained if pretrained is None else pretrained,
                                 pretrained_path=opt.pretrained_path, dropout=opt.drop,
                                 # a config saved before the option existed froze the affine
                                 # terms: resuming it keeps them frozen (its optimizer state fits)
                                 freeze_bn_affine=getattr(opt, "frozen_bn_affine", True))
    criterion = build_criterion(opt, num_classes)
    das = dense_anchors.build_producer(opt, num_classes=num_classes)
    sec = criteria.SphericalEmbeddingConstraint.from_options(opt)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    for module in (criterion, das, sec):
        if module is not None:
            module.to(device)
    optimizer = make_optimizer(opt, model, criterion)
    scheduler = make_scheduler(opt.scheduler, optimizer, opt.tau, opt.step_tau, opt.gamma)
    # --n_warm leaves the backbone without gradients for a while: DDP must allow that
    train_model = distributed.wrap_model(model, device, find_unused_parameters=opt.n_warm > 0)
    if opt.compile:
        train_model = torch.compile(train_model)
    return Training(opt, device, num_classes, model, train_model, criterion, das, sec, optimizer,
                    scheduler)


def load_run_data(config: Dict[str, Any], source: Optional[str] = None,
                  folder_name: Optional[str] = None) -> datasets.DatasetSplits:
    """The splits a run trains and evaluates on, from its options (``vars(opt)`` or its
    config.json): the one place that turns a run's data options into data, shared by training
    and the tools that re-read a run's data (evaluate, figures). ``source``/``folder_name``
    replace the run's when its data has moved; older configs lacking an option get its default."""
    return datasets.load(config["dataset"], source or config.get("source"),
                         use_tv_split=config.get("use_tv_split", False),
                         tv_split_perc=config.get("tv_split_perc", 0.8),
                         tv_split_by_samples=config.get("tv_split_by_samples", False),
                         seed=config.get("seed", 0),
                         folder_name=folder_name or config.get("folder_name"),
                         data_split=config.get("data_split", "default"),
                         data_split_path=config.get("data_split_path"),
                         data_split_id=config.get("data_split_id", 0))


def build_training(opt: argparse.Namespace, device: torch.device) -> Training:
    """Data (splits, sampler, training loader, evaluation sets) and :func:`build_learner`.
    The network decides the input convention (BN-Inception: BGR, 0-255)."""
    splits = load_run_data(vars(opt))
    validate_data(opt, splits)
    training = build_learner(opt, splits.train.num_classes, device)
    transform_config = training.model.transform_config(opt.crop_size, opt.augmentation)
    decode = datasets.resolve_decode(getattr(opt, "decode", "auto"), device, transform_config)
    # --no_random_augmentation: training images get the deterministic test transform
    train_set = image_dataset(splits.train, transform_config, not opt.no_random_augmentation,
                              decode)

    # evaluation images: the per-image (published) test transform unless --eval_transform batch
    eval_decode = evaluation_decode(decode, getattr(opt, "eval_transform", "published"))

    def eval_dataset(split):
        if isinstance(split, QueryGallery):  # In-Shop
            return split.map(lambda s: image_dataset(s, transform_config, False, eval_decode))
        return image_dataset(split, transform_config, False, eval_decode)

    eval_sets = {name: eval_dataset(split) for name, split in splits.evaluation.items()}
    if opt.train_metrics:
        eval_sets["train"] = eval_dataset(splits.train)
    sampler = datasampler.from_options(opt.data_sampler, opt, splits.train.labels,
                                       class_names=splits.train.class_names,
                                       super_labels=splits.train.super_labels,
                                       rank=distributed.rank(),
                                       world_size=distributed.world_size())
    loader = make_train_loader(train_set, sampler, opt, device)
    storage = StorageFeed.for_sampler(sampler, training.model,
                                      image_dataset(splits.train, transform_config, False, decode),
                                      device, opt)
    return replace(training, splits=splits, sampler=sampler, loader=loader, eval_sets=eval_sets,
                   storage=storage)


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


# ----------------------------------------------------------------------------- train / evaluate
def bf16_autocast(opt: argparse.Namespace, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: only with --amp, only on CUDA; the
    default is float32 as published (docs/PARITY.md). A run folder saved before --amp existed
    has no 'amp' in its config and ran bf16 unless --no_amp: resuming it keeps that."""
    return device.type == "cuda" and bool(getattr(opt, "amp", not getattr(opt, "no_amp", False)))


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


def train_one_epoch(training: Training, epoch: int, stats: EpochStats, writer,
                    stop: StopRequest, global_step: int) -> Tuple[int, bool]:
    """One pass over ``training.loader``. Returns the global step and whether it was stopped."""
    opt, device, model = training.opt, training.device, training.train_model
    criterion, das, sec = training.criterion, training.das, training.sec
    optimizer = training.optimizer
    storage = training.storage
    model.train()
    use_amp = bf16_autocast(opt, device)
    if device.type == "cuda":  # --tf32 / --cudnn_deterministic (docs/PARITY.md); CPU: no effect
        set_backend_flags(tf32=getattr(opt, "tf32", True),
                          cudnn_deterministic=getattr(opt, "cudnn_deterministic", True))
    batches = training.sampler  # its start_batch: the position in the epoch (resume)
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    bad_weights_step = torch.full((), -1, dtype=torch.long, device=device)
    weights = [p for p in list(model.parameters()) + list(criterion.parameters())
               if p.requires_grad]
    step = batches.start_batch - 1
    progress = tqdm(training.loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
                    disable=not distributed.is_main_process())
    for step, (images, labels, indices) in enumerate(progress, start=batches.start_batch):
        loss = training_step(model, criterion, das, optimizer, images, labels, device, use_amp,
                             sec=sec)
        if storage is not None:  # samplers that choose batches from training-set embeddings
            storage.after_step(indices, global_step + 1)

        step_scalars = {"loss": loss.detach()}
        step_scalars.update({f"criterion/{k}": v for k, v in criterion.stats.items()})
        if das is not None:
            step_scalars.update({f"das/{k}": v for k, v in das.stats.items()})
        if sec is not None:
            step_scalars.update({f"sec/{k}": v for k, v in sec.stats.items()})
        stats.add(step_scalars)
        # masked_fill with a Python number: no host-to-device copy, so no sync on CUDA
        first_bad_step = first_bad_step.masked_fill(
            (first_bad_step < 0) & ~torch.isfinite(loss.detach()), step)
        global_step += 1
        batches.start_batch = step + 1
        if global_step % opt.log_every == 0 or stop.requested:
            # The one host sync of the step, every --log_every steps.
            bad_weights_step = mark_non_finite_weights(weights, bad_weights_step, step)
            raise_if_non_finite(first_bad_step, bad_weights_step, epoch)
            values = {k: v.item() for k, v in step_scalars.items()}
            # gradients of this step (still held until the next zero_grad), logged only here
            values.update({k: v.item() for k, v in gradient_norms(model.parameters()).items()})
            running_loss = (stats.sums["loss"] / stats.steps).item()  # mean over the epoch so far
            progress.set_postfix(loss=f"{running_loss:.4f}", step_loss=f"{values['loss']:.4f}")
            if writer is not None:
                for key, value in values.items():
                    writer.add_scalar(f"step/{key}", value, global_step)
        if stop.requested:
            return global_step, True
    bad_weights_step = mark_non_finite_weights(weights, bad_weights_step, step)
    raise_if_non_finite(first_bad_step, bad_weights_step, epoch)
    return global_step, False


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


def evaluate_all(model, eval_sets, opt, device, writer=None, epoch: int = 0) -> Dict[str, float]:
    """Every evaluation split's scalar metrics (:func:`evaluation.evaluate`), keyed
    ``<split>/<metric>``; array metrics (``rho_spectrum@0``) go to ``writer`` as histograms at
    ``epoch``. Under torchrun rank 0 gets the figures, the other ranks an empty dict."""
    eval_backend = evaluation.select_backend(getattr(opt, "eval_backend", "auto"), device)
    results = {}
    for split_name, eval_set in eval_sets.items():
        values = evaluation.evaluate(model, eval_set, opt.evaluation_metrics, device, opt.eval_bs,
                                     opt.kernels, kmeans_iterations=opt.kmeans_iterations,
                                     seed=evaluation.kmeans_seed(
                                         getattr(opt, "kmeans_seed", "published"), opt.seed),
                                     backend=eval_backend)
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


# ----------------------------------------------------------------------------- checkpoints
def run_state(training: Training, epoch: int, global_step: int, best: Dict,
              epoch_stats: EpochStats) -> Dict:
    """Everything a resume needs after ``epoch`` (and ``epoch_stats.steps`` steps into the next
    one): the checkpoint format of checkpoint_last.pth / checkpoint_best.pth
    (ckpt.RUN_STATE_KEYS), read back by :func:`restore_run_state`."""
    opt, scheduler = training.opt, training.scheduler
    return {"epoch": epoch, "global_step": global_step, "best": best,
            "network": {"arch": opt.arch, "embed_dim": opt.embed_dim,
                        "state_dict": training.model.state_dict()},
            "optimizer": training.optimizer.state_dict(),
            "scheduler": {k: (dict(v) if k == "milestones" else v)
                          for k, v in scheduler.state_dict().items()},
            "criterion": training.criterion.state_dict(),
            "das": training.das.state_dict() if training.das is not None else {},
            "sec": training.sec.state_dict() if training.sec is not None else {},
            "sampler": training.sampler.state_dict(), "epoch_stats": epoch_stats.state_dict(),
            "rng": rng_state()}


def restore_run_state(training: Training, path: str,
                      epoch_stats: EpochStats) -> Tuple[int, int, Dict]:
    """Load the checkpoint at ``path`` (checked against the run's arch and embedding size first)
    into ``training`` and ``epoch_stats``; returns ``(epoch, global_step, best)``."""
    state = ckpt.load_checkpoint(path, required=ckpt.RUN_STATE_KEYS)
    architectures.check_checkpoint(state, training.opt.arch, training.opt.embed_dim, path)
    # Damaged or non-finite weights are refused here, naming the file, not an epoch later.
    where = f"checkpoint '{path}'"
    ckpt.check_state_dict(state["network"]["state_dict"], training.model.state_dict(), where,
                          f"--arch '{training.opt.arch}'")
    for part in ("optimizer", "criterion", "das", "sec"):
        ckpt.check_finite_state(state.get(part), where, part)
    parts = [("optimizer", training.optimizer.load_state_dict),
             ("scheduler", training.scheduler.load_state_dict),
             ("criterion", training.criterion.load_state_dict),
             ("das", training.das.load_state_dict if training.das is not None else None),
             ("sec", training.sec.load_state_dict if training.sec is not None else None),
             ("sampler", training.sampler.load_state_dict),
             ("epoch_stats", lambda s: epoch_stats.load_state_dict(s, training.device)),
             ("rng", set_rng_state)]
    part = "network"
    try:
        training.model.load_state_dict(state["network"]["state_dict"])
        for part, load in parts:
            if load is not None:
                load(state[part])
        epoch, global_step, best = state["epoch"], state["global_step"], state["best"]
        if not (isinstance(epoch, int) and isinstance(global_step, int)
                and isinstance(best, dict)):
            part = "position"
            raise TypeError("epoch, global_step or best has the wrong type")
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ckpt.CheckpointError(f"{where} is damaged: its {part} state does not load into "
                                   f"this run ({detail})") from None
    return epoch, global_step, best


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


def died_in_loader_worker(error: BaseException) -> bool:
    """Whether ``error`` says a DataLoader worker died. torch reports it as a RuntimeError
    "DataLoader worker (pid ...) exited unexpectedly / is killed by signal" (the latter from its
    SIGCHLD handler, wherever the main thread is at that moment); a worker that dies while
    handing over a batch surfaces instead as a ConnectionError or EOFError raised inside the
    loader, while the main process unpickles that batch."""
    if isinstance(error, RuntimeError) and not isinstance(error, DataError):
        return "DataLoader worker (pid" in str(error)
    if isinstance(error, (ConnectionError, EOFError)):  # raised receiving a batch from a worker
        files = [frame.f_code.co_filename.replace(os.sep, "/")
                 for frame, _ in traceback.walk_tb(error.__traceback__)]
        return (any("torch/utils/data/" in name for name in files)
                and any("multiprocessing/" in name for name in files))
    return False


def worker_death_message(folder: str, kernels: int, error: BaseException) -> str:
    fewer = f" --kernels {kernels // 2}" if kernels > 1 else " --kernels 0"
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(". ")
    return (f"a data loader worker died ({detail}; often the out-of-memory killer); the last "
            f"checkpoint is kept. {resume_hint(folder)}{fewer} (fewer workers use less memory)")


def stop_loader_workers(loader) -> None:
    """Shut down the workers of a loader with persistent workers now. Until its iterator shuts
    down, torch keeps a dead worker registered with its SIGCHLD handler, which then raises in
    the main thread whenever any child process exits; torch has no public call for this."""
    inner = getattr(loader, "loader", loader)  # datasets._batch.DeviceDecodingLoader wraps one
    iterator = getattr(inner, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        inner._iterator = None


@contextlib.contextmanager
def loader_worker_guard(folder: str, opt: argparse.Namespace, loader=None):
    """A DataLoader worker that died (typically the out-of-memory killer) becomes one line
    saying how to continue, instead of torch's RuntimeError or a ConnectionResetError. (torch's
    SIGCHLD handler may raise its RuntimeError a moment later, even inside this handler:
    :func:`run` catches that one.)"""
    try:
        yield
    except (RuntimeError, ConnectionError, EOFError) as error:
        if not died_in_loader_worker(error):
            raise
        if loader is not None:
            stop_loader_workers(loader)
        raise TrainingError(worker_death_message(folder, opt.kernels, error)) from None


def format_results(results: Dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in results.items())


# ----------------------------------------------------------------------------- the run
def main(argv: Optional[List[str]] = None) -> str:
    """Run one training; returns the run folder. The run folder's lock and torch's thread count
    are released / restored however it ends (tests call it repeatedly in one process)."""
    threads = torch.get_num_threads()
    try:
        return train(argv)
    finally:
        rf.release_locks()
        torch.set_num_threads(threads)


def train(argv: Optional[List[str]] = None) -> str:
    SETUP["finished"], SETUP["folder"], SETUP["kernels"] = False, "", 0
    distributed.init_from_environment()
    opt, given = command_line_options(argv)
    validate_options(opt, given)
    device = choose_device(opt)
    if opt.resume and device.type == "cpu" and getattr(opt, "torch_threads", None) \
            and opt.torch_threads != torch.get_num_threads():
        # CPU float reductions depend on the thread count: continue as the run started.
        print(f"using {opt.torch_threads} torch threads, as the run did", flush=True)
        torch.set_num_threads(opt.torch_threads)
    seed_everything(opt.seed)
    world_size = distributed.world_size()
    is_main = distributed.is_main_process()

    training = build_training(opt, device)
    model, das, optimizer, scheduler = (training.model, training.das, training.optimizer,
                                        training.scheduler)
    sampler, splits, eval_sets = training.sampler, training.splits, training.eval_sets
    selection_key = training.selection_key
    data_record = rf.training_data_record(splits.train.class_names, len(splits.train))
    if opt.resume:  # before any state is loaded: the checkpoint belongs to the data it saw
        rf.check_same_training_data(vars(opt), data_record,
                                    os.path.join(opt.resume, rf.CONFIG_FILE))

    # Run folder (rank 0 writes everything).
    start_epoch, global_step, best = 0, 0, {"key": selection_key, "value": -math.inf, "epoch": -1}
    epoch_stats = EpochStats()
    if opt.resume:
        folder = opt.resume
        start_epoch, global_step, best = restore_run_state(
            training, os.path.join(folder, rf.LAST_CHECKPOINT), epoch_stats)
        if is_main:
            rf.MetricsTable(folder).truncate_after(start_epoch)
    elif is_main:
        folder = rf.create_run_folder(opt.save_path, opt.savename, opt.dataset, opt.arch, opt.seed)
        rf.lock_run_folder(folder)
    else:
        folder = ""
    folder = distributed.broadcast_string(folder)
    SETUP["folder"], SETUP["kernels"] = folder, opt.kernels
    stop = StopRequest()
    stop.install()
    if is_main:
        rf.write_config(folder, dict(vars(opt), device=str(device), world_size=world_size,
                                     torch_threads=torch.get_num_threads(), **data_record))
        print(f"run folder: {folder}", flush=True)
        print(f"device: {device}  train: {len(splits.train)} images / {splits.train.num_classes} "
              f"classes  batches per epoch: {len(sampler)}", flush=True)
    from torch.utils.tensorboard import SummaryWriter  # imported late: slow import

    writer = SummaryWriter(folder, purge_step=global_step or None) if is_main else None
    metrics_table = rf.MetricsTable(folder) if is_main else None

    def checkpoint_state(epoch: int) -> Dict:
        return run_state(training, epoch, global_step, best, epoch_stats)

    if start_epoch == 0 and sampler.start_batch == 0 and opt.eval_initial:
        initial = evaluate_all(model, eval_sets, opt, device, writer, 0)
        if is_main:
            metrics_table.append(dict(epoch=0, loss=float("nan"), lr=opt.lr, **initial))
            print(f"epoch 0 (untrained): {format_results(initial)}", flush=True)

    SETUP["finished"] = True
    # Epochs. Epoch numbers in logs start at 1; row 0 is the untrained network (--eval_initial).
    for epoch in range(start_epoch, opt.n_epochs):
        started = time.time()
        sampler.set_epoch(epoch)
        if training.storage is not None:  # fill / refresh the sampler's storage (timed here)
            training.storage.epoch_start(epoch)
        model.warmup = epoch < opt.n_warm  # --n_warm: only the embedding layer trains
        with loader_worker_guard(folder, opt, training.loader):
            global_step, stopped = train_one_epoch(training, epoch + 1, epoch_stats, writer, stop,
                                                   global_step)
        if stopped:
            if is_main:
                with stop.saving():
                    ckpt.save_checkpoint(checkpoint_state(epoch),
                                         os.path.join(folder, rf.LAST_CHECKPOINT))
                print(f"\nstopped by {stop.signal_name} during epoch {epoch + 1}; saved "
                      f"{os.path.join(folder, rf.LAST_CHECKPOINT)}. {resume_hint(folder)}",
                      flush=True)
            distributed.cleanup()
            sys.exit(130)
        scheduler.step()
        train_means = epoch_stats.means()
        epoch_stats = EpochStats()
        sampler.start_batch = 0
        with loader_worker_guard(folder, opt):
            results = evaluate_all(model, eval_sets, opt, device, writer, epoch + 1)
        if is_main:
            row = epoch_row(epoch + 1, train_means, optimizer, time.time() - started, results)
            metrics_table.append(row)
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(f"epoch/{key}", value, epoch + 1)
            dense_anchors.save_frequency_if_due(das, epoch + 1, opt.das_save_frequency_epochs,
                                                folder)
            print(f"epoch {epoch + 1}/{opt.n_epochs} loss={row['loss']:.4f}  "
                  f"{format_results(results)}", flush=True)
            current = results.get(selection_key)
            with stop.saving():
                if current is not None and current > best["value"]:
                    best = {"key": selection_key, "value": current, "epoch": epoch + 1}
                    ckpt.save_checkpoint(checkpoint_state(epoch + 1),
                                         os.path.join(folder, rf.BEST_CHECKPOINT))
                ckpt.save_checkpoint(checkpoint_state(epoch + 1),
                                     os.path.join(folder, rf.LAST_CHECKPOINT))
            if stop.exit_after_save:
                print(f"\nstopped by a second {stop.signal_name} during the save after epoch "
                      f"{epoch + 1}; saved {os.path.join(folder, rf.LAST_CHECKPOINT)}. "
                      f"{resume_hint(folder)}", flush=True)
                distributed.cleanup()
                sys.exit(130)
        distributed.barrier()

    if is_main:
        writer.close()
        write_training_summary(folder, opt)
        print(open(os.path.join(folder, rf.SUMMARY_FILE)).read(), end="")
        print(f"run folder: {folder}", flush=True)
    distributed.cleanup()
    return folder


def write_training_summary(folder: str, opt: argparse.Namespace) -> None:
    """training_summary.txt: the last epoch's figures and the best epoch's by the run's own
    selection metric, read back through the shared run-folder reader."""
    run = rf.read_run(folder)
    lines = [f"dataset: {opt.dataset}   arch: {opt.arch}   loss: {opt.loss}   "
             f"DAS: {'on' if opt.embedding_producer_used else 'off'}   seed: {opt.seed}"]
    last = run.pick("last")
    if last is None:
        lines.append("no epoch finished")
        rf.write_summary(folder, lines)
        return
    metric_columns = [c for c in last if "/" in c and not c.startswith("stats/")]

    def figures(row: Dict) -> str:
        return "  ".join(f"{c}={row[c]:.4f}" for c in metric_columns if row.get(c) is not None)

    lines.append(f"last epoch ({int(last['epoch'])}): {figures(last)}")
    key, best = run.selection_key, run.pick("best")
    if best is not None:
        lines.append(f"best epoch ({int(best['epoch'])}) selected by {key} "
                     f"(split '{key.split('/')[0]}'): {figures(best)}")
    else:
        lines.append(f"best: no epoch reported {key}")
    rf.write_summary(folder, lines)


def run(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: known failures print one line, not a stack trace. A ValueError
    counts as bad input only while the run is being set up; later it is a bug and keeps its
    traceback."""
    try:
        return run_reporting_errors(argv)
    except (RuntimeError, ConnectionError, EOFError) as error:
        # a dead worker outside loader_worker_guard, or torch's SIGCHLD handler raising while
        # one was being reported
        if not died_in_loader_worker(error):
            raise
        message = worker_death_message(SETUP["folder"], SETUP["kernels"], error)
        print(f"error: {message}", file=sys.stderr)
        return 2


def run_reporting_errors(argv: Optional[List[str]] = None) -> int:
    """:func:`main`, its known failures printed as one line (exit status 2, 130 for Ctrl-C)."""
    try:
        main(argv)
    except DataError as error:
        print(f"error: {error.short_message()}", file=sys.stderr)
        return 2
    except (UnknownNameError, ckpt.CheckpointError, architectures.PretrainedWeightsError,
            TrainingError, ConfigError, rf.RunFolderBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UserError as error:  # every other known bad input (utilities/errors.py)
        print(f"error: {error.short_message()}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        folder = SETUP["folder"]
        hint = (f"; the last saved checkpoint is kept. {resume_hint(folder)}"
                if folder and os.path.isfile(os.path.join(folder, rf.LAST_CHECKPOINT)) else "")
        print(f"\nerror: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as error:  # e.g. a full disk while writing metrics.csv
        if died_in_loader_worker(error):  # outside loader_worker_guard: run() reports it
            raise
        where = f" '{error.filename}'" if error.filename else ""
        print(f"error: cannot access{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    except ValueError as error:
        if SETUP["finished"]:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
