"""DAS's command-line options, declared here and collected by ``parameters.py``, and the one check
of them (:func:`check_options`, at start-up, before any data is read)."""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

from utilities.options import (Option, add_declared, non_negative_float, option_name,
                               positive_float, positive_int)

from .sampling import BANK_RULES, DenselyAnchoredSampling, check_settings

SWITCH = "embedding_producer_used"  # turns DAS on; the group's other options need it
PRODUCE_TYPES = ("DAS",)
GROUP_TITLE = "DAS (densely-anchored sampling)"


OPTIONS = (
    Option("--embedding_producer_used", action="store_true",
           help="Add generated embeddings (dense anchors) to every batch."),
    Option("--produce_type", default="DAS", type=str, help="Embedding producer; only DAS exists."),
    Option("--das_num_produce", default=3, type=positive_int,
           help="Generated copies of the batch per step."),
    Option("--das_not_normalize", action="store_true", help="Do not L2-normalize generated rows."),
    Option("--das_dfs_num_scale", default=4, type=positive_int,
           help="K: dimensions scaled by DFS."),
    Option("--das_dfs_scale_left", default=0.5, type=positive_float,
           help="DFS scale factors from [left, right)."),
    Option("--das_dfs_scale_right", default=2.0, type=positive_float),
    Option("--das_mts_num_transformation_bank", default=10, type=positive_int,
           help="Q: differences kept per class by MTS."),
    Option("--das_mts_scale", default=0.01, type=non_negative_float,
           help="Scale of the MTS shift."),
    Option("--das_mts_bank", default="published", choices=list(BANK_RULES),
           help="MTS bank write when one class brings more than Q pairs in a batch: published "
                "(its last Q fill slots 0..Q-1, the write pointer stays; the published code) or "
                "fifo (a true first-in-first-out ring). See docs/DAS.md."),
    Option("--detach", action="store_true", help="Generated rows carry no gradient."),
    Option("--aux_loss", action="store_true", help="Loss = L(real) + w * L(real + generated)."),
    Option("--aux_loss_weight", default=1.0, type=non_negative_float),
    Option("--das_save_frequency_epochs", default=[], nargs="*", type=positive_int,
           help="Epochs (1-based) after which DFS's class-by-dimension counter, each row divided "
                "by its maximum, is saved as das_frequency_epoch<N>.npy in the run folder (for "
                "`python -m tools.figures frequency`)."),
)


def add_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Declare DAS's options (names and defaults of the published scripts)."""
    group = parser.add_argument_group(GROUP_TITLE)
    add_declared(group, OPTIONS)
    return group


def option_names() -> Dict[str, str]:
    """dest -> option name of the group's options, the switch itself aside."""
    group = add_options(argparse.ArgumentParser(add_help=False))
    return {a.dest: option_name(a) for a in group._group_actions if a.dest != SWITCH}


def settings(opt: argparse.Namespace) -> Dict:
    """The constructor arguments of :class:`DenselyAnchoredSampling` from the options (one
    mapping, used by the start-up check and by :func:`build_producer`)."""
    if opt.produce_type not in PRODUCE_TYPES:
        raise ValueError(f"unknown --produce_type '{opt.produce_type}'; valid values: "
                         f"{', '.join(PRODUCE_TYPES)}")
    return dict(embed_dim=opt.embed_dim, num_produce=opt.das_num_produce,
                normalize=not opt.das_not_normalize, dfs_num_scale=opt.das_dfs_num_scale,
                dfs_scale_left=opt.das_dfs_scale_left, dfs_scale_right=opt.das_dfs_scale_right,
                mts_bank_size=opt.das_mts_num_transformation_bank, mts_scale=opt.das_mts_scale,
                detach=opt.detach, aux_loss=opt.aux_loss, aux_loss_weight=opt.aux_loss_weight,
                mts_bank=opt.das_mts_bank)


def check_options(opt: argparse.Namespace, given: Optional[Dict] = None) -> None:
    """Refuse, before any data is read: DAS options typed without the switch, an unknown
    ``--produce_type``, impossible settings (``given``: the options typed on the command line)."""
    if getattr(opt, SWITCH):
        args = settings(opt)
        check_settings(args["embed_dim"], args["num_produce"], args["dfs_num_scale"],
                       args["dfs_scale_left"], args["dfs_scale_right"], args["mts_bank_size"],
                       args["mts_scale"])
        return
    das_only: List[str] = [name for dest, name in option_names().items() if dest in (given or {})]
    if das_only:
        one = len(das_only) == 1
        raise ValueError(f"{', '.join(das_only)} {'acts' if one else 'act'} only with "
                         f"--{SWITCH}, which is not given; add it to use DAS, or drop "
                         f"{'it' if one else 'them'}")


def build_producer(opt: argparse.Namespace,
                   num_classes: int) -> Optional[DenselyAnchoredSampling]:
    """The embedding producer of the command line, or None without ``--embedding_producer_used``.
    Refuses an unknown ``--produce_type`` and impossible settings."""
    if not getattr(opt, SWITCH):
        return None
    return DenselyAnchoredSampling(num_classes=num_classes, **settings(opt))
