"""Command-line options of ``main.py``.

Option names and defaults follow the Revisiting-DML codebase and the DAS paper's published
scripts, so their command lines run unchanged. Options whose sensible default depends on the
dataset (architecture, crop size, number of epochs, pretraining, Recall@K values) default to
``None`` here and are filled in by :func:`resolve_dataset_defaults`.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import batchminer
import criteria
import das
import datasampler
import datasets
from criteria import _sec as criteria_sec
from utilities import run_folder as rf
from utilities.data import default_workers
from utilities.options import (OptionParser, Range, add_declared, between, bookkeeping,
                               changes_experiment, check_saved_options, document_ranges,
                               given_options, greater_than, non_negative_float, non_negative_int,
                               positive_float, positive_int, registry_options, torch_device)

# The defaults of options left unset and the Recall@K list are the dataset's own: the
# `defaults` and `recall_ks` of its record in datasets/<name>.py (see resolve_dataset_defaults).
DEFAULT_DATASET = "omniglot"
# Upper bounds of the size options: values a machine can meet; the combination --bs/--eval_bs x
# --crop_size is also checked against this machine's memory
# (training.checks.check_batch_fits_in_memory).
MAX_CROP_SIZE = 1024
MAX_BATCH = 4096
MAX_EMBED_DIM = 8192
MAX_WORKERS = 256

# Flags of older command lines that mean nothing here. They are not options (nothing reads them
# and config.json does not record them): parse_command_line drops them with a one-line note.
# flag -> what this codebase does instead.
NO_OP_FLAGS = {
    "--no_amp": "float32 is the default; bf16 autocast is --amp",
    "--train_metrics": "train-split metrics are on unless --no_train_metrics",
    "--evaluate_on_gpu": "faiss-gpu is used whenever it is installed; see --eval_backend",
}


def basic_training_parameters(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=DEFAULT_DATASET, type=str,
                       help="Dataset name (see datasets/). Default: the bundled Omniglot "
                            "characters (data/omniglot/).")
    bookkeeping(group, "--source", "--source_path", dest="source", default=None, type=str,
                       help="Folder holding <dataset>/ in its published layout (for `folder`: the "
                            "class tree itself, or its parent when named by --folder_name).")
    group.add_argument("--folder_name", default=None, type=str,
                       help="For --dataset folder: subfolder of --source that holds the class "
                            "tree.")
    group.add_argument("--use_tv_split", action="store_true",
                       help="Split the training classes into train and validation "
                            "(class-disjoint).")
    group.add_argument("--tv_split_by_samples", action="store_true",
                       help="Split per class by samples instead of by classes.")
    group.add_argument("--tv_split_perc", default=0.8,
                       type=between(0.0, 1.0, open_low=True, open_high=True),
                       help="Share of the training classes (or samples) kept for training.")
    group.add_argument("--augmentation", default=None, choices=["base", "adv", "big", "red"],
                       help="base: RandomResizedCrop+flip; adv: + colour jitter; big: 256 crops; "
                            "red: resize+random crop instead of RandomResizedCrop (default: base; "
                            "red for omniglot and digits).")
    group.add_argument("--crop_size", default=None, type=between(1, MAX_CROP_SIZE),
                       help="Training/test crop size (224 for image benchmarks, 48 for omniglot, "
                            f"32 for digits). At most {MAX_CROP_SIZE}: a batch of larger crops "
                            "and its activations do not fit in memory (checked with --bs and "
                            "--eval_bs against this machine's memory at start-up).")
    group.add_argument("--no_random_augmentation", action="store_true",
                       help="Train without random augmentation: training images get the test "
                            "transform (resize + centre crop).")
    group.add_argument("--data_split", default="default", choices=["default", "ooDML"],
                       help="Class split: the dataset's own, or ooDML: train/test classes named "
                            "in --data_split_path (see docs/PARITY.md for the file format).")
    group.add_argument("--data_split_path", default=None, type=str,
                       help="ooDML split file: a pickle (as published for CARS196) or JSON.")
    group.add_argument("--data_split_id", default=0, type=non_negative_int,
                       help="Which split of --data_split_path to use.")
    bookkeeping(group, "--kernels", default=None, type=between(0, MAX_WORKERS),
                       help="DataLoader worker processes (default: 6, or fewer on a machine with "
                            f"fewer cores; at most {MAX_WORKERS}, each one a process holding its "
                            "own copy of the dataset index).")
    group.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"],
                       help="Where images are decoded and cropped: cpu (loader workers, "
                            "torchvision.io + transforms.v2 on uint8), gpu (workers read bytes; "
                            "nvJPEG batch decode and one batched crop on the device; base/big "
                            "augmentation), auto (gpu on CUDA with nvJPEG when it applies).")
    group.add_argument("--eval_transform", default="published", choices=["published", "batch"],
                       help="Evaluation images: published (per-image Resize + CenterCrop in the "
                            "workers, within one uint8 level of the published PIL transform, on "
                            "every device) or batch (as --decode: on CUDA the batched roi_align "
                            "crop, which moves figures; see docs/PARITY.md).")

    group = parser.add_argument_group("batches")
    group.add_argument("--data_sampler", default="class_random", type=str,
                       help="Batch sampler (see datasampler/).")
    group.add_argument("--samples_per_class", default=None, type=between(1, MAX_BATCH),
                       help="Images per class in a class_random batch (2; 4 for omniglot, 20 for "
                            "digits).")
    group.add_argument("--bs", default=None, type=between(1, MAX_BATCH),
                       help="Mini-batch size of real images (112; 100 for digits). At most "
                            f"{MAX_BATCH}: a batch's images, activations and B x B similarity "
                            "matrices must fit in memory.")
    # the samplers' own --data_* options, declared in datasampler/<name>.py
    add_declared(group, registry_options(datasampler.REGISTRY))

    group = parser.add_argument_group("network")
    group.add_argument("--arch", default=None, type=str,
                       help="Backbone name plus option words: frozen, normalize, double; other "
                            "words are a run label (e.g. resnet50_frozen_normalize).")
    group.add_argument("--embed_dim", default=128, type=between(1, MAX_EMBED_DIM),
                       help=f"Embedding dimension (at most {MAX_EMBED_DIM}: the embedding layer, "
                            "DAS's per-class counters and the evaluation's N x D embeddings grow "
                            "with it).")
    group.add_argument("--drop", default=-1, type=Range(float, high=1.0, open_high=True),
                       help="Dropout probability on the pooled features in training (<= 0: off).")
    group.add_argument("--not_pretrained", action="store_true", help="Start from random weights.")
    group.add_argument("--pretrained", action="store_true",
                       help="Use ImageNet weights even where the dataset default is random init.")
    group.add_argument("--pretrained_path", "--ckpt_path", dest="pretrained_path", default=None,
                       type=str, help="Local backbone state dict to start from.")
    bookkeeping(group, "--compile", action="store_true", help="torch.compile the backbone (CUDA).")
    group.add_argument("--frozen_bn_affine", action="store_true",
                       help="With a 'frozen' arch, also fix the BatchNorm affine weights (left "
                            "out of the optimizer). Published: they train, with weight decay.")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--optim", default="adam", choices=["adam", "sgd", "adamw"],
                       help="Optimizer of the network and criterion parameter groups.")
    group.add_argument("--lr", default=None, type=positive_float,
                       help="Learning rate (default 1e-5; 1e-3 for omniglot and digits).")
    group.add_argument("--fc_lr", default=-1, type=greater_than(0.0, also=(-1,)),
                       help="Learning rate of the embedding layer; -1 uses --lr.")
    group.add_argument("--decay", default=0.0004, type=non_negative_float, help="Weight decay.")
    group.add_argument("--layer_decay", default=1.0, type=between(0.0, 1.0, open_low=True),
                       help="Layer-wise lr decay of a timm backbone: layer i of L trains at "
                            "--lr * layer_decay ** (L - 1 - i) (ViT fine-tuning); 1: off.")
    group.add_argument("--n_epochs", default=None, type=non_negative_int, help="Training epochs.")
    group.add_argument("--n_warm", default=0, type=non_negative_int,
                       help="Warm-up: during the first N epochs only the embedding layer trains.")
    group.add_argument("--scheduler", default="multistep", choices=["multistep", "step"],
                       help="multistep: decay by --gamma at the epochs of --tau; step: every "
                            "--step_tau epochs.")
    group.add_argument("--step_tau", default=10, type=positive_int,
                       help="Epochs between learning-rate decays of --scheduler step.")
    group.add_argument("--tau", default=[1000], nargs="+", type=positive_int,
                       help="Epochs at which the learning rate is multiplied by --gamma.")
    group.add_argument("--gamma", default=0.3, type=positive_float,
                       help="Learning-rate decay factor.")
    group.add_argument("--loss", default="multisimilarity", type=str,
                       help="Criterion (see criteria/).")
    group.add_argument("--batch_mining", default="distance", type=str,
                       help="Batch miner for tuple-based criteria (see batchminer/).")
    group.add_argument("--amp", action="store_true",
                       help="bf16 autocast of the network's forward pass on CUDA. Off: float32 "
                            "with TF32 matmuls, the published code's precision (docs/PARITY.md).")

    group = parser.add_argument_group("evaluation")
    group.add_argument("--evaluation_metrics", nargs="+", default=None, type=str,
                       help="Metrics (see metrics/ and docs/EVALUATION.md); default recall@K "
                            "for the dataset's K, nmi, f1, map@r, r_precision. Also the "
                            "published names: e_recall@K, mAP, mAP_c, mAP_1000, mAP_lim, "
                            "c_recall@K, c_nmi, c_f1, c_mAP_c, c_mAP_1000, c_mAP_lim, "
                            "dists@intra, dists@inter, dists@intra_over_inter, rho_spectrum@N.")
    group.add_argument("--storage_metric", "--storage_metrics", dest="storage_metric",
                       default="recall@1", type=str, nargs="?",
                       help="Metric that selects checkpoint_best.pth.")
    bookkeeping(group, "--no_train_metrics", action="store_true",
                       help="Do not evaluate on the training split every epoch (on by default, "
                            "as in the published code; it costs time only, test figures are "
                            "unchanged).")
    group.add_argument("--eval_initial", action="store_true", default=None,
                       help="Also evaluate the untrained network (row epoch 0 of metrics.csv); on "
                            "by default for the bundled omniglot and digits.")
    group.add_argument("--no_eval_initial", dest="eval_initial", action="store_false", default=None,
                       help="Do not evaluate the untrained network.")
    group.add_argument("--kmeans_iterations", default=20, type=positive_int,
                       help="k-means iterations for NMI/F1.")
    group.add_argument("--kmeans_seed", default="published", choices=["published", "run"],
                       help="Seed of the NMI/F1 k-means: published (faiss's default seed 1234 "
                            "whatever --seed is, as the published evaluation) or run (--seed).")
    bookkeeping(group, "--eval_bs", default=None, type=between(1, MAX_BATCH),
                       help="Batch size for computing evaluation embeddings (default: --bs; at "
                            f"most {MAX_BATCH}, as --bs).")
    group.add_argument("--eval_backend", default="auto", choices=["auto", "faiss", "torch"],
                       help="kNN and k-means: faiss (its GPU build when installed), torch "
                            "(chunked matrix products on the run's device), auto (torch on CUDA "
                            "when the faiss GPU build is absent, else faiss).")

    group = parser.add_argument_group("setup")
    group.add_argument("--seed", default=0, type=between(0, 2**32 - 1),
                       help="Seeds Python, NumPy and torch.")
    group.add_argument("--cudnn_deterministic", dest="cudnn_deterministic", action="store_true",
                       default=True,
                       help="CUDA: cudnn picks deterministic kernels, as the published code sets "
                            "with its seed (the default).")
    group.add_argument("--no_cudnn_deterministic", dest="cudnn_deterministic",
                       action="store_false",
                       help="CUDA: let cudnn pick non-deterministic kernels (faster for some "
                            "convolutions; the same seed no longer gives the same figures).")
    group.add_argument("--tf32", dest="tf32", action="store_true", default=True,
                       help="CUDA: TF32 matmuls and convolutions on Ampere and later GPUs (the "
                            "default; see docs/PARITY.md for what it trades).")
    group.add_argument("--no_tf32", dest="tf32", action="store_false",
                       help="CUDA: true float32 matmuls and convolutions, as the published runs "
                            "on a Pascal GPU (slower on Ampere and later).")
    bookkeeping(group, "--gpu", default=[0], nargs="+", type=non_negative_int,
                       help="CUDA card to use.")
    bookkeeping(group, "--device", default=None, type=torch_device,
                       help="Force a torch device (cpu, cuda, cuda:1); default: CUDA when present.")
    bookkeeping(group, "--savename", default="", type=str, help="Run folder name.")
    bookkeeping(group, "--save_path", default="Training_Results", type=str,
                       help="Parent folder of run folders.")
    bookkeeping(group, "--resume", default=None, type=str,
                       help="Run folder to continue from its checkpoint_last.pth.")
    bookkeeping(group, "--log_every", default=20, type=positive_int,
                       help="Steps between per-step TensorBoard scalars (each one syncs once).")
    return parser


def loss_specific_parameters(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``--loss_*`` options, declared by each criterion (``options`` in criteria/<name>.py)."""
    add_declared(parser.add_argument_group("criteria"), registry_options(criteria.REGISTRY))
    return parser


def batchmining_specific_parameters(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``--miner_*`` options, declared by each miner (``options`` in batchminer/<name>.py)."""
    add_declared(parser.add_argument_group("batch miners"), registry_options(batchminer.REGISTRY))
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        prog="main.py",
        description="Deep metric learning with densely-anchored sampling (DAS).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Accepted and ignored, so that older command lines run: "
               + "; ".join(f"{flag} ({meaning})" for flag, meaning in NO_OP_FLAGS.items()) + ".",
    )
    basic_training_parameters(parser)
    loss_specific_parameters(parser)
    batchmining_specific_parameters(parser)
    das.add_options(parser)
    criteria_sec.add_options(parser)
    document_ranges(parser)
    return parser


def resolve_dataset_defaults(opt: argparse.Namespace) -> argparse.Namespace:
    """Fill options left unset with the dataset's defaults, as its record in datasets/ declares
    them (``defaults``, ``recall_ks``); an unknown name (refused later) gets the benchmarks'."""
    dataset = datasets.REGISTRY.find(opt.dataset)  # an unknown name is refused by the checks
    defaults = dataset.defaults if dataset else datasets.IMAGE_BENCHMARK
    for key in ("arch", "crop_size", "n_epochs", "bs", "samples_per_class", "augmentation", "lr",
                "eval_initial"):
        if getattr(opt, key) is None:
            setattr(opt, key, getattr(defaults, key))
    if opt.kernels is None:
        opt.kernels = default_workers()
    if opt.not_pretrained and opt.pretrained:
        raise SystemExit("error: --pretrained and --not_pretrained contradict each other")
    opt.pretrained = (defaults.pretrained or opt.pretrained) and not opt.not_pretrained
    if opt.evaluation_metrics is None:
        ks = dataset.recall_ks if dataset else datasets.DEFAULT_RECALL_KS
        opt.evaluation_metrics = [f"recall@{k}" for k in ks] + ["nmi", "f1", "map@r", "r_precision"]
    if opt.eval_bs is None:
        opt.eval_bs = opt.bs
    # Train-split metrics are on unless --no_train_metrics (published default); config.json
    # records what the run does as train_metrics.
    opt.train_metrics = not opt.no_train_metrics
    if opt.miner_semihard_margin is None:
        opt.miner_semihard_margin = getattr(opt, f"loss_{opt.loss}_margin",
                                            opt.loss_triplet_margin)
    return opt


# Options that default to None and are always set once resolve_dataset_defaults has run: a saved
# config.json must hold a value for each.
FILLED_IN = ("arch", "crop_size", "n_epochs", "bs", "samples_per_class", "augmentation", "kernels",
             "lr", "evaluation_metrics", "eval_bs", "miner_semihard_margin")


def parse_command_line(argv: Optional[List[str]] = None) -> Tuple["RunSpec", Dict[str, object]]:
    """Parse the command line once: ``(options as typed with parser defaults, {dest: value} of the
    options actually typed})``. Dataset defaults are not filled in (see parse_options)."""
    parser = build_parser()
    argv = without_no_op_flags(sys.argv[1:] if argv is None else list(argv))
    opt = parser.parse_args(argv, namespace=RunSpec())
    return opt, given_options(parser, argv)


def parse_options(argv: Optional[List[str]] = None) -> "RunSpec":
    """The options of a new run: parsed, dataset defaults filled in."""
    return resolve_dataset_defaults(parse_command_line(argv)[0])


def without_no_op_flags(argv: List[str]) -> List[str]:
    """``argv`` less the flags of :data:`NO_OP_FLAGS`, each dropped with a one-line note."""
    for flag in sorted(set(argv) & set(NO_OP_FLAGS)):
        print(f"note: {flag} does nothing here: {NO_OP_FLAGS[flag]}", file=sys.stderr)
    return [word for word in argv if word not in NO_OP_FLAGS]


# Entries main.py writes into config.json beside the options: how the run ran, what it derived
# and what it trained on. name -> whether it changes the experiment (as changes_experiment()).
RECORDED = {"world_size": False, "torch_threads": False, "train_metrics": False,
            **dict.fromkeys(rf.TRAINING_DATA_KEYS, True)}


class RunSpec(argparse.Namespace):
    """One run's settings: every option declared here or by a member (typed and range-checked as
    declared) plus the :data:`RECORDED` entries. config.json serializes it (:meth:`to_config`);
    main.py's resume and every command that reads a run folder load it back (:meth:`load`)."""

    @classmethod
    def load(cls, folder: str) -> "RunSpec":
        """The spec in ``folder``/config.json, checked against today's declarations: a missing,
        ill-typed or out-of-range option raises ConfigError naming the file and key."""
        config = rf.read_config(folder)
        check_saved_options(build_parser(), config, os.path.join(folder, rf.CONFIG_FILE),
                            filled=FILLED_IN)
        return cls(**config)

    def to_config(self) -> Dict[str, Any]:
        return dict(vars(self))

    def replaced(self, **values: Any) -> "RunSpec":
        """A copy with ``values`` replaced (e.g. a tool's own --batch_size as eval_bs)."""
        return RunSpec(**dict(vars(self), **values))


@functools.lru_cache(maxsize=1)
def bookkeeping_keys() -> frozenset:
    """config.json entries that do not change the experiment: the options declared with
    ``bookkeeping`` (or ``Option(..., changes_experiment=False)``) and the RECORDED facts marked
    so. Runs differing only in these are one setting; a resume may give those that are options
    of main.py anew; a table row ignores them."""
    options = {action.dest for action in build_parser()._actions
               if not changes_experiment(action)}
    recorded = {key for key, changes in RECORDED.items() if not changes}
    older_no_ops = {flag.lstrip("-") for flag in NO_OP_FLAGS}  # keys of older config.json files
    return frozenset(options | recorded | older_no_ops)


# A resume continues in its own run folder: the options that place it cannot change.
RUN_FOLDER_PLACE = ("savename", "save_path", "resume")


def resume_overridable() -> Tuple[str, ...]:
    """Options a --resume may give with a new value: the bookkeeping options except the run
    folder's place, and --n_epochs, to extend a run."""
    options = {action.dest for action in build_parser()._actions}
    return tuple(sorted((bookkeeping_keys() & options) - set(RUN_FOLDER_PLACE) | {"n_epochs"}))
