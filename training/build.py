"""From a run's spec to what it trains with: data, network, learner, optimizer.

:func:`load_run_data` and :func:`build_network` are the one place that turns a spec into a
run's data and its network; main.py, resume, the tools and the bench all build through them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader

import architectures
import batchminer
import criteria
import das as dense_anchors
import datasampler
import datasets
from datasampler._feed import StorageFeed
from datasets import ImageDataset, QueryGallery, device_decoding, image_dataset
from datasets._batch import evaluation_decode
from parameters import RunSpec
from training.checks import validate_data
from utilities import device as devices
from utilities import distributed
from utilities.data import SeededBatches, SeededDataset
from utilities.schedulers import make_scheduler


@dataclass
class Training:
    """What one training run trains with, built by :func:`build_training` (main, resume, the
    bench and the tools share it); ``training.loop.train_one_epoch`` takes it whole."""

    opt: RunSpec
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


def choose_device(spec: RunSpec) -> torch.device:
    """--device, else the process's card under torchrun, else CUDA card --gpu, else the CPU."""
    return devices.choose_device(spec.device, spec.gpu[0])


def load_run_data(spec: RunSpec, source: Optional[str] = None,
                  folder_name: Optional[str] = None) -> datasets.DatasetSplits:
    """The splits a run trains and evaluates on (its --data_split, class split file and
    train/validation options included); ``source``/``folder_name`` replace the run's when its
    data has moved."""
    return datasets.load(spec.dataset, source or spec.source, use_tv_split=spec.use_tv_split,
                         tv_split_perc=spec.tv_split_perc,
                         tv_split_by_samples=spec.tv_split_by_samples, seed=spec.seed,
                         folder_name=folder_name or spec.folder_name,
                         data_split=spec.data_split, data_split_path=spec.data_split_path,
                         data_split_id=spec.data_split_id)


def build_network(spec: RunSpec, pretrained: Optional[bool] = None
                  ) -> architectures.EmbeddingNetwork:
    """The run's embedding network (on the CPU). ``pretrained``: None takes the run's own
    weights (--pretrained, --pretrained_path); False builds random weights and reads no file,
    for a caller that loads a checkpoint next."""
    use_weights = spec.pretrained if pretrained is None else pretrained
    return architectures.select(spec.arch, spec.embed_dim, pretrained=use_weights,
                                pretrained_path=spec.pretrained_path if pretrained is not False
                                else None,
                                dropout=spec.drop, freeze_bn_affine=spec.frozen_bn_affine)


def build_criterion(spec: RunSpec, num_classes: int) -> criteria.BaseCriterion:
    """The criterion of --loss, with the --batch_mining miner when it takes one."""
    criterion_class = criteria.REGISTRY.get(spec.loss)
    miner = batchminer.select(spec.batch_mining, spec) if criterion_class.requires_miner else None
    return criteria.select(spec.loss, spec, num_classes=num_classes, miner=miner)


def make_optimizer(spec: RunSpec, model: architectures.EmbeddingNetwork,
                   criterion: criteria.BaseCriterion) -> torch.optim.Optimizer:
    """Parameter groups as the published code builds them (scripts/standard.py): the network
    (backbone at --lr, embedding layer at --fc_lr) with weight decay --decay (--layer_decay:
    the backbone's layers at decaying rates, timm backbones); the criterion's
    learnable parameters at their own lr with the weight decay their loss defines (proxyanchor:
    --loss_proxyanchor_decay) and otherwise none of ours, so the optimizer's own default applies
    (0 for Adam and SGD, torch's 0.01 for AdamW). No global weight decay: decaying e.g. the margin
    loss's beta would pull it to 0 on every step its class is absent (docs/PARITY.md)."""
    fc_lr = spec.fc_lr if spec.fc_lr > 0 else spec.lr
    if spec.layer_decay != 1.0:  # --layer_decay: one group per layer of a timm backbone
        groups = architectures.layer_decay_groups(model, spec.lr, spec.decay, spec.layer_decay)
    else:
        groups = [{"params": list(model.backbone_parameters()), "lr": spec.lr,
                   "weight_decay": spec.decay, "name": "backbone"}]
    groups += [
        {"params": list(model.embedding_parameters()), "lr": fc_lr, "weight_decay": spec.decay,
         "name": "embedding"},
    ]
    groups += [dict(group, name=group.get("name", f"criterion_{i}"))
               for i, group in enumerate(criterion.param_groups())]
    if spec.optim == "adam":
        return torch.optim.Adam(groups, lr=spec.lr)
    if spec.optim == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr)
    return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9)


def build_learner(spec: RunSpec, num_classes: int, device: torch.device,
                  pretrained: Optional[bool] = None) -> Training:
    """Network, miner + criterion, DAS, SEC, optimizer and scheduler on ``device`` (no data)."""
    model = build_network(spec, pretrained)
    criterion = build_criterion(spec, num_classes)
    das = dense_anchors.build_producer(spec, num_classes=num_classes)
    sec = criteria.SphericalEmbeddingConstraint.from_options(spec)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    for module in (criterion, das, sec):
        if module is not None:
            module.to(device)
    optimizer = make_optimizer(spec, model, criterion)
    scheduler = make_scheduler(spec.scheduler, optimizer, spec.tau, spec.step_tau, spec.gamma)
    # --n_warm leaves the backbone without gradients for a while: DDP must allow that
    train_model = distributed.wrap_model(model, device, find_unused_parameters=spec.n_warm > 0)
    if spec.compile:
        train_model = torch.compile(train_model)
    return Training(spec, device, num_classes, model, train_model, criterion, das, sec, optimizer,
                    scheduler)


def make_train_loader(train_set: ImageDataset, sampler: datasampler.BaseBatchSampler,
                      spec: RunSpec, device: torch.device) -> DataLoader:
    """Training batches from ``sampler``, each image augmented with its own seed."""
    encoded = hasattr(train_set, "batch_decoder")  # --decode gpu: bytes, decoded on the device
    loader = DataLoader(SeededDataset(train_set), batch_sampler=SeededBatches(sampler, spec.seed),
                        num_workers=spec.kernels, pin_memory=device.type == "cuda" and not encoded,
                        persistent_workers=spec.kernels > 0,
                        collate_fn=getattr(train_set, "collate_fn", None),
                        # its own generator: creating a loader iterator must not consume the
                        # global RNG, or a resumed run would draw differently afterwards
                        generator=torch.Generator().manual_seed(spec.seed))
    return device_decoding(loader, train_set, device)


def build_training(spec: RunSpec, device: torch.device) -> Training:
    """Data (splits, sampler, training loader, evaluation sets) and :func:`build_learner`.
    The network decides the input convention (BN-Inception: BGR, 0-255)."""
    splits = load_run_data(spec)
    validate_data(spec, splits)
    training = build_learner(spec, splits.train.num_classes, device)
    transform_config = training.model.transform_config(spec.crop_size, spec.augmentation)
    decode = datasets.resolve_decode(spec.decode, device, transform_config)
    # --no_random_augmentation: training images get the deterministic test transform
    train_set = image_dataset(splits.train, transform_config, not spec.no_random_augmentation,
                              decode)

    # evaluation images: the per-image (published) test transform unless --eval_transform batch
    eval_decode = evaluation_decode(decode, spec.eval_transform)

    def eval_dataset(split):
        if isinstance(split, QueryGallery):  # In-Shop
            return split.map(lambda s: image_dataset(s, transform_config, False, eval_decode))
        return image_dataset(split, transform_config, False, eval_decode)

    eval_sets = {name: eval_dataset(split) for name, split in splits.evaluation.items()}
    if spec.train_metrics:
        eval_sets["train"] = eval_dataset(splits.train)
    sampler = datasampler.from_options(spec.data_sampler, spec, splits.train.labels,
                                       class_names=splits.train.class_names,
                                       super_labels=splits.train.super_labels,
                                       rank=distributed.rank(),
                                       world_size=distributed.world_size())
    loader = make_train_loader(train_set, sampler, spec, device)
    storage = StorageFeed.for_sampler(sampler, training.model,
                                      image_dataset(splits.train, transform_config, False, decode),
                                      device, spec)
    return replace(training, splits=splits, sampler=sampler, loader=loader, eval_sets=eval_sets,
                   storage=storage)
