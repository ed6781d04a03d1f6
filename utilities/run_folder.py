"""The run folder: config.json, metrics.csv, TensorBoard events, checkpoints, summary."""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Dict, List, Optional

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "training_summary.txt"
LAST_CHECKPOINT = "checkpoint_last.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"


def default_run_name(dataset: str, arch: str, seed: int) -> str:
    return f"{dataset}_{arch}_s{seed}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def create_run_folder(save_path: str, savename: str, dataset: str, arch: str, seed: int) -> str:
    """Create a fresh run folder; an existing name gets a numeric suffix, never overwritten."""
    base = os.path.join(save_path, savename or default_run_name(dataset, arch, seed))
    folder, counter = base, 1
    while os.path.exists(folder):
        folder = f"{base}_{counter}"
        counter += 1
    try:
        os.makedirs(folder)
        probe = os.path.join(folder, ".write_test")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"cannot write run folder '{folder}' under --save_path '{save_path}': "
                         f"{error.strerror or error}") from None
    return folder


def write_config(folder: str, config: Dict) -> None:
    with open(os.path.join(folder, CONFIG_FILE), "w") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)


def read_config(folder: str) -> Dict:
    with open(os.path.join(folder, CONFIG_FILE)) as handle:
        return json.load(handle)


class MetricsTable:
    """metrics.csv: one row per epoch. The columns are fixed by the first row written; a resumed
    run appends to the same file with the same columns."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, METRICS_FILE)
        self.columns: Optional[List[str]] = None
        if os.path.exists(self.path):
            with open(self.path, newline="") as handle:
                self.columns = next(csv.reader(handle), None)

    def append(self, row: Dict[str, float]) -> None:
        if self.columns is None:
            leading = [c for c in ("epoch", "loss") if c in row]
            self.columns = leading + sorted(c for c in row if c not in leading)
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writerow({k: _fmt(v) for k, v in row.items()})

    def rows(self) -> List[Dict[str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (written after the checkpoint a resume uses)."""
        rows = [r for r in self.rows() if int(float(r["epoch"])) <= epoch]
        if self.columns is None:
            return
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_summary(folder: str, lines: List[str]) -> None:
    with open(os.path.join(folder, SUMMARY_FILE), "w") as handle:
        handle.write("\n".join(lines) + "\n")
