"""Evaluate a trained run's checkpoint on its own data or on another dataset.

    python -m tools.evaluate RUN_DIR                         # the run's test split, last checkpoint
    python -m tools.evaluate RUN_DIR/checkpoint_best.pth --split val
    python -m tools.evaluate RUN_DIR --dataset cars196 --source DATA --evaluation_metrics recall@1

Without ``--dataset``/``--source`` the run's own dataset is read as the run read it (its
train/validation split options included) and evaluated exactly as ``main.py`` does after an
epoch (``evaluate_all``, the run's ``--eval_bs``, ``--kmeans_iterations`` and ``--seed``),
so the figures equal that epoch's row of ``metrics.csv``. Prints ``<split>/<metric>=<value>``
lines and writes them as JSON next to the checkpoint (or to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import datasets
import metrics
from datasets import ImageDataset, QueryGallery
from training.loop import evaluate_all
from tools._common import (WRITTEN_BY, ToolError, check_loader, check_output, choose_device,
                           write_text)
from tools._trained_model import load_trained_model
from utilities.errors import run_command
from utilities.run_folder import _fmt

SPLITS = ("test", "val", "train")


def evaluation_set(trained, dataset: Optional[str], source: Optional[str],
                   folder_name: Optional[str], split: str):
    """``(dataset name, source, the split as main.py evaluates it)``: one ImageDataset, or a
    QueryGallery of two for In-Shop."""

    spec = trained.spec
    own = dataset is None or dataset == spec.dataset
    name = dataset or spec.dataset
    if own:  # the run's data exactly as main.py built it (training.build.load_run_data)
        splits = trained.splits(source, folder_name)
        source = source or spec.source
    else:  # another dataset: its validation split cut as the run cut its own
        splits = datasets.load(name, source, use_tv_split=split == "val",
                               tv_split_perc=spec.tv_split_perc,
                               tv_split_by_samples=spec.tv_split_by_samples,
                               seed=spec.seed, folder_name=folder_name)
    available = dict(splits.evaluation, train=splits.train)
    if split not in available:
        raise ToolError(f"--split {split}: dataset '{name}' as run '{trained.folder}' reads it has "
                        f"no such split (it has {', '.join(available)}; 'val' needs a run trained "
                        f"with --use_tv_split)")
    chosen = available[split]
    if isinstance(chosen, QueryGallery):  # In-Shop: queries searched among the gallery
        return name, source, chosen.map(lambda s: ImageDataset(s, trained.transform))
    return name, source, ImageDataset(chosen, trained.transform)


def evaluate_checkpoint(path: str, checkpoint: str = "last", dataset: Optional[str] = None,
                        source: Optional[str] = None, folder_name: Optional[str] = None,
                        split: str = "test", metric_names: Optional[List[str]] = None,
                        device: Optional[str] = None, batch_size: Optional[int] = None,
                        num_workers: int = 0, out: Optional[str] = None,
                        out_for=None) -> Tuple[object, Dict]:
    """``(the loaded run, report)``; ``report['metrics']`` maps ``<split>/<metric>`` to values.
    ``out`` (or ``out_for(trained, dataset, split)``), the JSON to be written, is checked first."""

    if split not in SPLITS:
        raise ToolError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    check_loader(batch_size, num_workers)
    trained = load_trained_model(path, checkpoint)
    if out is not None or out_for is not None:  # refused before the evaluation runs
        check_output(out if out is not None else out_for(trained, dataset, split), "--out",
                     (".json",))
    spec = trained.spec
    metric_names = list(metric_names or spec.evaluation_metrics)
    metrics.select_all(metric_names)  # unknown names stop here, listing the valid ones
    batch_size = batch_size or spec.eval_bs
    if batch_size <= 0 or num_workers < 0:
        raise ToolError(f"--batch_size must be positive and --num_workers >= 0, got "
                        f"{batch_size} and {num_workers}")
    torch_device = choose_device(device)
    name, used_source, eval_set = evaluation_set(trained, dataset, source, folder_name, split)
    options = spec.replaced(evaluation_metrics=metric_names, eval_bs=batch_size,
                            kernels=num_workers)
    trained.model.to(torch_device)
    results = evaluate_all(trained.model, {split: eval_set}, options, torch_device)
    report = {WRITTEN_BY: "tools.evaluate",
              "checkpoint": os.path.abspath(trained.checkpoint_path), "epoch": trained.epoch,
              "arch": spec.arch, "dataset": name, "source": used_source, "split": split,
              "metrics": results}
    return trained, report


def default_out(trained, dataset: Optional[str], split: str) -> str:
    """``<checkpoint stem>_eval[_<dataset>]_<split>.json`` next to the checkpoint."""
    stem = os.path.splitext(os.path.basename(trained.checkpoint_path))[0]
    own = dataset is None or dataset == trained.spec.dataset
    other = "" if own else f"_{dataset}"
    return os.path.join(os.path.dirname(os.path.abspath(trained.checkpoint_path)),
                        f"{stem}_eval{other}_{split}.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run", help="Run folder, or a checkpoint file inside one.")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"],
                        help="Which checkpoint of a run folder.")
    parser.add_argument("--dataset", default=None, help="Another dataset (default: the run's).")
    parser.add_argument("--source", default=None,
                        help="Its data folder (default: the run's --source).")
    parser.add_argument("--folder_name", default=None, help="As main.py's --folder_name.")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--evaluation_metrics", nargs="+", default=None,
                        help="Metric names (default: the run's).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any).")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="Images per batch (default: the run's --eval_bs).")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers.")
    parser.add_argument("--out", default=None,
                        help="JSON file (default: next to the checkpoint).")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:

        trained, report = evaluate_checkpoint(args.run, args.checkpoint, args.dataset,
                                              args.source, args.folder_name, args.split,
                                              args.evaluation_metrics, args.device,
                                              args.batch_size, args.num_workers, args.out,
                                              default_out)
        out = args.out or default_out(trained, args.dataset, args.split)
        print(f"{report['checkpoint']} (epoch {report['epoch']}) on {report['dataset']} "
              f"{report['split']}:")
        for key, value in report["metrics"].items():
            print(f"{key}={_fmt(value)}")  # as metrics.csv writes it
        write_text(out, json.dumps(report, indent=2))
        print(f"wrote {out}")
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
