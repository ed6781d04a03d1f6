"""Forward+backward time of every criterion next to pytorch-metric-learning's counterpart.

The batch is what a DAS step hands the criterion: 448 x 512 L2-normalized rows, 112 real (56
classes x 2) followed by 336 generated rows that repeat the real rows' labels. Criteria that need
a miner are timed with the miner the paper's tables use (mining included), and PML with its own
counterpart miner. Where PML has no such loss, the nearest one is timed and marked ``~``.
Runs are interleaved (ours, PML, ours, ...) and the median is reported, which keeps a noisy shared
machine from favouring either side. Last line: ``worst_ratio_vs_pml=<x>``.

    python -m bench.criteria [--repeats 15] [--device cpu]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

import batchminer
import criteria
from parameters import parse_options
from utilities.device import choose_device

NUM_CLASSES, PER_CLASS, GENERATED_COPIES, DIM = 56, 2, 3, 512


class pml_with_miner:  # noqa: N801 (reads like a function in the table below)
    """PML loss (and optional PML miner) as one callable(embeddings, labels)."""

    def __init__(self, loss: torch.nn.Module, miner=None) -> None:
        self.loss, self.miner = loss, miner

    def to(self, device: torch.device) -> "pml_with_miner":
        self.loss.to(device)
        return self

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tuples = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, tuples)


class pml_npairs_every_anchor(pml_with_miner):  # noqa: N801
    """PML's NPairsLoss keeps one pair per class (56 anchors x 56 candidates here), while the
    N-pair loss of Revisiting-DML and the paper makes every row an anchor (448 x 448). To time the
    same amount of work, every row becomes its own "class" paired with a fixed positive of its
    class: 448 anchors against 448 candidates, one matrix product like ours (the values differ:
    only the work is matched)."""

    def __init__(self) -> None:
        super().__init__(pml_losses.NPairsLoss())
        self.partner: Optional[torch.Tensor] = None

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.partner is None:  # fixed positive per row: the next row of its class
            order = torch.argsort(labels, stable=True)
            rows_per_class = int((labels == labels[0]).sum())
            shifted = order.view(-1, rows_per_class).roll(1, dims=1).flatten()
            self.partner = torch.empty_like(order)
            self.partner[order] = shifted
        own = torch.arange(len(labels), device=labels.device)
        return self.loss(torch.cat([embeddings, embeddings[self.partner]]), torch.cat([own, own]))


def pml_counterparts(num_classes: int, dim: int) -> Dict[str, Tuple[str, pml_with_miner]]:
    """name -> (PML loss name, callable(embeddings, labels) -> loss). Same hyper-parameters as
    this codebase's defaults where they exist."""
    distance_miner = pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    triplet = pml_losses.TripletMarginLoss(margin=0.2)
    unnormalized = pml_distances.LpDistance(normalize_embeddings=False)
    return {
        "triplet": ("TripletMarginLoss+DistanceWeightedMiner",
                    pml_with_miner(triplet, distance_miner)),
        "contrastive": ("ContrastiveLoss+DistanceWeightedMiner",
                        pml_with_miner(pml_losses.ContrastiveLoss(0, 1), distance_miner)),
        "margin": ("MarginLoss+DistanceWeightedMiner", pml_with_miner(
            pml_losses.MarginLoss(0.2, beta=1.2, learn_beta=True, num_classes=num_classes),
            distance_miner)),
        "quadruplet": ("~TripletMarginLoss+DistanceWeightedMiner",
                       pml_with_miner(triplet, distance_miner)),
        "snr": ("TripletMarginLoss(SNRDistance)+DistanceWeightedMiner", pml_with_miner(
            pml_losses.TripletMarginLoss(0.2, distance=pml_distances.SNRDistance()),
            distance_miner)),
        "adversarial_separation": ("~TripletMarginLoss+DistanceWeightedMiner",
                                   pml_with_miner(triplet, distance_miner)),
        "lifted": ("GeneralizedLiftedStructureLoss", pml_with_miner(
            pml_losses.GeneralizedLiftedStructureLoss(1.0, 0, distance=unnormalized))),
        "npair": ("NPairsLoss, every row an anchor (work-matched, see note)",
                  pml_npairs_every_anchor()),
        "angular": ("AngularLoss", pml_with_miner(pml_losses.AngularLoss(alpha=45))),
        "multisimilarity": ("MultiSimilarityLoss+MultiSimilarityMiner", pml_with_miner(
            pml_losses.MultiSimilarityLoss(2, 40, 0.5), pml_miners.MultiSimilarityMiner(0.1))),
        "histogram": ("HistogramLoss", pml_with_miner(pml_losses.HistogramLoss(n_bins=64))),
        "proxynca": ("ProxyNCALoss", pml_with_miner(
            pml_losses.ProxyNCALoss(num_classes, dim, softmax_scale=9))),
        "proxyanchor": ("ProxyAnchorLoss", pml_with_miner(
            pml_losses.ProxyAnchorLoss(num_classes, dim, margin=0.1, alpha=32))),
        "softtriplet": ("SoftTripleLoss", pml_with_miner(pml_losses.SoftTripleLoss(
            num_classes, dim, centers_per_class=2, la=8, gamma=0.1, margin=0.01))),
        "arcface": ("ArcFaceLoss", pml_with_miner(pml_losses.ArcFaceLoss(
            num_classes, dim, margin=math.degrees(0.5), scale=16))),
        "softmax": ("NormalizedSoftmaxLoss", pml_with_miner(
            pml_losses.NormalizedSoftmaxLoss(num_classes, dim, temperature=0.05))),
    }


# The miner each tuple-based criterion is timed with (as in the paper's tables).
MINER_FOR = {"triplet": "distance", "contrastive": "distance", "margin": "distance",
             "quadruplet": "distance", "snr": "distance", "adversarial_separation": "distance",
             "lifted": "lifted", "npair": "npair", "angular": "npair"}


def step_time(loss_fn: Callable, embeddings: torch.Tensor, labels: torch.Tensor,
              device: torch.device) -> float:
    embeddings.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loss_fn(embeddings, labels).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None, help="Default: CUDA when present.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice). On a shared, "
                             "oversubscribed CPU, 1 gives much steadier figures.")
    parser.add_argument("--only", nargs="*", default=None, help="Criteria to time (default all).")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence")  # PML's HistogramLoss

    torch.manual_seed(0)
    opt = parse_options(["--embed_dim", str(DIM), "--lr", "1e-5"])
    real_labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    labels = real_labels.repeat(GENERATED_COPIES + 1).to(device)
    num_real = len(real_labels)
    embeddings = F.normalize(torch.randn(len(labels), DIM), dim=1).to(device).requires_grad_(True)
    counterparts = pml_counterparts(NUM_CLASSES, DIM)
    names = args.only or criteria.REGISTRY.names()

    print(f"# {len(labels)} x {DIM} batch ({num_real} real + {len(labels) - num_real} generated, "
          f"{NUM_CLASSES} classes), device {device}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'criterion':<24}{'miner':<10}{'ours_ms':>9}{'pml_ms':>9}{'ratio':>7}  pml")
    worst = 0.0
    for name in names:
        if name not in counterparts:  # a new criterion: time it once it has an entry above
            print(f"{name:<24}not compared: no entry in bench/criteria.py's pml_counterparts",
                  flush=True)
            continue
        miner_name = MINER_FOR.get(name)
        miner = batchminer.select(miner_name, opt) if miner_name else None
        criterion = criteria.select(name, opt, NUM_CLASSES, miner).to(device)
        pml_name, pml_fn = counterparts[name]
        pml_fn.to(device)
        ours_fn = lambda e, y: criterion(e, y, num_real)  # noqa: E731
        for _ in range(args.warmup):
            step_time(ours_fn, embeddings, labels, device)
            step_time(pml_fn, embeddings, labels, device)
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(step_time(ours_fn, embeddings, labels, device))
            theirs.append(step_time(pml_fn, embeddings, labels, device))
        ours_ms, pml_ms = 1e3 * statistics.median(ours), 1e3 * statistics.median(theirs)
        ratio = ours_ms / pml_ms
        worst = max(worst, ratio)
        print(f"{name:<24}{miner_name or '-':<10}{ours_ms:>9.2f}{pml_ms:>9.2f}{ratio:>7.2f}  "
              f"{pml_name}", flush=True)
    if "npair" in names:
        per_class = pml_with_miner(pml_losses.NPairsLoss()).to(device)
        per_class_ms = 1e3 * statistics.median(
            step_time(per_class, embeddings, labels, device) for _ in range(args.repeats))
        print(f"# note: PML's own NPairsLoss keeps one pair per class (56 x 56 logits): "
              f"{per_class_ms:.2f} ms; the N-pair loss here (Revisiting-DML's, used by the paper) "
              f"makes all 448 rows anchors against all 448 rows, 64x the logits")
    print(f"worst_ratio_vs_pml={worst:.2f}")
    return worst


if __name__ == "__main__":
    main()
