"""Omniglot check of reference parity (issue 11): held-out Recall@1 per loss, with and without DAS.

Trains ``tinycnn_normalize`` from scratch on the first 68 classes of the Omniglot "background
small 1" zip and retrieves among the other 68 (the ``folder`` dataset's class split), at crop 48,
batch 112 with 2 images per class, lr 1e-3, 10 epochs, for every chosen config and seed. Each run is
a full ``main.py`` run in this process; its ``metrics.csv`` gives the figures.

Configs: ``ms`` (multi-similarity), ``triplet_semihard``, ``margin`` (with the ``distance`` miner,
as table2.sh's Margin row), each as the baseline and ``+das`` (the CUB200/CARS196 flags of
table2.sh: DFS range 0.99-1.01, ``--detach``; see docs/DAS.md).

    python bench/omniglot_parity.py                          # 6 configs x seeds 0 1 2
    python -m bench.omniglot_parity --configs ms ms+das --seeds 0 --epochs 2 --csv part.csv

Prints one line per run as it finishes, then a table of R@1 mean +- std per config (at the last
epoch, and each run's maximum over epochs) with the per-seed figures; writes every run to --csv.
Record figures in docs/PARITY.md, naming the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO_ROOT = Path(__file__).resolve().parents[1]
ZIP_NAME = "images_background_small1.zip"
TREE_NAME = "images_background_small1"

COMMON = ["--dataset", "folder", "--folder_name", TREE_NAME, "--arch", "tinycnn_normalize",
          "--not_pretrained", "--crop_size", "48", "--bs", "112", "--samples_per_class", "2",
          "--lr", "1e-3", "--embed_dim", "128", "--device", "cpu", "--no_train_metrics",
          "--evaluation_metrics", "recall@1", "recall@4", "map@r", "--storage_metric", "recall@1"]
DAS = ["--embedding_producer_used", "--produce_type", "DAS", "--das_dfs_scale_left", "0.99",
       "--das_dfs_scale_right", "1.01", "--detach"]
LOSSES = {
    "ms": ["--loss", "multisimilarity"],
    "triplet_semihard": ["--loss", "triplet", "--batch_mining", "semihard"],
    "margin": ["--loss", "margin", "--batch_mining", "distance"],
}
CONFIGS = {name: flags for loss, flags in LOSSES.items()
           for name, flags in ((loss, flags), (f"{loss}+das", flags + DAS))}
CSV_FIELDS = ["config", "seed", "epochs", "recall@1_last", "recall@1_max", "map@r_last",
              "seconds", "run_folder"]


def find_zip(explicit: Optional[str]) -> Path:
    """The zip from --zip, $OMNIGLOT_ZIP, or the copy bundled in data/omniglot/."""
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("OMNIGLOT_ZIP"):
        candidates.append(Path(os.environ["OMNIGLOT_ZIP"]))
    candidates.append(REPO_ROOT / "data" / "omniglot" / ZIP_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit("error: Omniglot zip not found; expected one of "
                     + ", ".join(str(p) for p in candidates) + " (or pass --zip FILE)")


def read_metrics(folder: str) -> List[Dict[str, str]]:
    with open(os.path.join(folder, "metrics.csv"), newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(float(row["epoch"])) > 0]


def run_one(config: str, seed: int, epochs: int, source: str, save_path: str, kernels: int,
            quiet: bool) -> Dict[str, object]:
    import main  # imported late: --help stays fast

    argv = COMMON + CONFIGS[config] + ["--source", source, "--seed", str(seed), "--n_epochs",
                                       str(epochs), "--kernels", str(kernels), "--save_path",
                                       save_path, "--savename", f"{config}_s{seed}"]
    started = time.time()
    with contextlib.ExitStack() as stack:
        if quiet:  # main.py's lines on stdout, progress bars on stderr
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        folder = main.main(argv)
    rows = read_metrics(folder)
    recall = [float(row["test/recall@1"]) for row in rows]
    return {"config": config, "seed": seed, "epochs": epochs, "recall@1_last": recall[-1],
            "recall@1_max": max(recall), "map@r_last": float(rows[-1]["test/map@r"]),
            "seconds": round(time.time() - started, 1), "run_folder": folder}


def mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {std:.4f}"


def summary_table(results: List[Dict[str, object]]) -> str:
    lines = ["| config | R@1 last epoch (mean +- std) | R@1 max over epochs "
             "| per seed (last / max) |", "|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in results):
        runs = [r for r in results if r["config"] == config]
        per_seed = ", ".join(f"s{r['seed']}: {r['recall@1_last']:.4f} / {r['recall@1_max']:.4f}"
                             for r in runs)
        lines.append(f"| {config} | {mean_std([r['recall@1_last'] for r in runs])} | "
                     f"{mean_std([r['recall@1_max'] for r in runs])} | {per_seed} |")
    return "\n".join(lines)


def write_csv(path: str, results: List[Dict[str, object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in results:
            writer.writerow({k: (v if k != "run_folder" else os.path.basename(str(v)))
                             for k, v in result.items()})


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--kernels", type=int, default=0, help="DataLoader workers (0 or 1).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    parser.add_argument("--zip", default=None,
                        help="The Omniglot zip (default: the bundled data/omniglot copy).")
    parser.add_argument("--csv", default="omniglot_parity.csv", help="Per-run results.")
    parser.add_argument("--verbose", action="store_true", help="Show main.py's output.")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    archive = find_zip(args.zip)
    results = []
    with tempfile.TemporaryDirectory(prefix="omniglot_parity_") as tmp:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(tmp)
        runs_dir = os.path.join(tmp, "runs")
        for config in args.configs:
            for seed in args.seeds:
                result = run_one(config, seed, args.epochs, tmp, runs_dir, args.kernels,
                                 quiet=not args.verbose)
                results.append(result)
                print(f"{config} seed {seed}: R@1 last {result['recall@1_last']:.4f} max "
                      f"{result['recall@1_max']:.4f} MAP@R {result['map@r_last']:.4f} "
                      f"({result['seconds']} s)", flush=True)
                write_csv(args.csv, results)  # after every run: a stopped bench keeps its runs
    print(f"\nOmniglot 68/68 classes, tinycnn_normalize, crop 48, bs 112 (2 per class), lr 1e-3, "
          f"{args.epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(summary_table(results))
    print(f"per-run figures: {args.csv}")


if __name__ == "__main__":
    main()
