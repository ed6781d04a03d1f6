"""Checks of a run's options against each other, the registries, this machine and its data.

The range of each single option is declared with it (parameters.py, the members) and checked
by argparse, and by ``check_saved_options`` on resume; what is checked here needs more than
one option, or the data. Every refusal is an :class:`OptionError`: one line, exit status 2.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import architectures
import batchminer
import criteria
import das as dense_anchors
import datasampler
import datasets
import metrics
from datasets import QueryGallery
from parameters import RunSpec
from utilities import run_folder as rf
from utilities.errors import UserError


class OptionError(UserError, ValueError):
    """Options that contradict each other, the data or this machine; also a ValueError that a
    member raised while the run was being set up (bad input, not a bug: see main.start)."""


def validate_options(spec: RunSpec, given: Optional[Dict] = None) -> None:
    """Checks between options and against the registries, before any data is read;
    ``given``: the options typed on the command line."""
    given = given or {}
    datasets.REGISTRY.get(spec.dataset)
    datasampler.REGISTRY.get(spec.data_sampler)
    architectures.REGISTRY.get(architectures.parse_arch(spec.arch).backbone)
    criterion_class = criteria.REGISTRY.get(spec.loss)
    batchminer.REGISTRY.get(spec.batch_mining)  # also when the criterion takes no miner
    if criterion_class.requires_miner and spec.batch_mining not in criterion_class.accepted_miners:
        raise OptionError(f"criterion '{spec.loss}' does not accept --batch_mining "
                          f"{spec.batch_mining}; accepted: "
                          f"{', '.join(criterion_class.accepted_miners)}")
    metrics.select_all(spec.evaluation_metrics)  # unknown names stop here, listing the valid ones
    if spec.storage_metric not in spec.evaluation_metrics:
        raise OptionError(f"--storage_metric {spec.storage_metric} selects checkpoint_best.pth "
                          f"but is not among --evaluation_metrics "
                          f"({' '.join(spec.evaluation_metrics)})")
    if not metrics.select(spec.storage_metric).scalar:
        raise OptionError(f"--storage_metric {spec.storage_metric} is an array (logged as a "
                          f"histogram), not a figure that can select checkpoint_best.pth")
    dense_anchors.check_options(spec, given)
    late = [epoch for epoch in spec.das_save_frequency_epochs or [] if epoch > spec.n_epochs]
    if late:
        raise OptionError(f"--das_save_frequency_epochs {' '.join(map(str, late))} lies beyond "
                          f"--n_epochs {spec.n_epochs}: that counter would never be saved; "
                          f"choose epochs from 1 to {spec.n_epochs}")
    check_batch_fits_in_memory(spec)
    if not spec.resume:
        rf.new_run_base(spec.save_path, spec.savename)  # not inside an existing run folder


def machine_memory_bytes() -> int:
    """Physical memory of this machine (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_batch_fits_in_memory(spec: RunSpec) -> None:
    """Refuse, before any data is read, a --bs/--eval_bs at --crop_size whose float32 input
    batch alone takes more than a quarter of this machine's memory (the network's activations
    need many times more): otherwise the run dies in the allocator after loading the data."""
    memory = machine_memory_bytes()
    if not memory:
        return
    for flag, batch in (("--bs", spec.bs), ("--eval_bs", spec.eval_bs)):
        needed = batch * 3 * spec.crop_size ** 2 * 4
        if needed > memory // 4:
            raise OptionError(f"{flag} {batch} at --crop_size {spec.crop_size} needs "
                              f"{needed / 2**30:.1f} GiB for one batch of input images alone, "
                              f"more than a quarter of this machine's {memory / 2**30:.1f} GiB; "
                              f"lower {flag} or --crop_size")


def validate_data(spec: RunSpec, splits: datasets.DatasetSplits) -> None:
    """Checks that need the data: every evaluation split must hold two classes or more."""
    for name, split in splits.evaluation.items():
        if isinstance(split, QueryGallery):  # In-Shop: checked by its parser
            continue
        if split.num_classes < 2:
            if name == "val":
                raise OptionError(f"--use_tv_split with --tv_split_perc {spec.tv_split_perc} "
                                  f"leaves {split.num_classes} validation class; retrieval "
                                  f"metrics need at least 2: lower --tv_split_perc")
            raise OptionError(f"the {name} split holds {split.num_classes} class; retrieval "
                              f"metrics need at least 2")
