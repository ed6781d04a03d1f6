"""The run folder: config.json, metrics.csv, TensorBoard events, checkpoints, summary."""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Dict, List

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
    """metrics.csv: one row per epoch. A row with new columns (e.g. the first trained epoch after
    the untrained row 0) extends the header and rewrites the file; a resumed run appends to it."""

    LEADING = ("epoch", "loss", "lr", "epoch_time_s")

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, METRICS_FILE)

    def rows(self) -> List[Dict[str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def columns(self) -> List[str]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as handle:
            return next(csv.reader(handle), [])

    def _order(self, names) -> List[str]:
        leading = [c for c in self.LEADING if c in names]
        rest = sorted(c for c in names if c not in leading)
        return leading + [c for c in rest if not c.startswith("stats/")] + \
            [c for c in rest if c.startswith("stats/")]

    def _write(self, columns: List[str], rows: List[Dict[str, str]]) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)

    def append(self, row: Dict[str, float]) -> None:
        formatted = {k: _fmt(v) for k, v in row.items()}
        columns = self.columns()
        if set(formatted) - set(columns):
            self._write(self._order(set(columns) | set(formatted)), self.rows() + [formatted])
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore").writerow(formatted)

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (written after the checkpoint a resume uses)."""
        columns = self.columns()
        if columns:
            self._write(columns, [r for r in self.rows() if int(float(r["epoch"])) <= epoch])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_summary(folder: str, lines: List[str]) -> None:
    with open(os.path.join(folder, SUMMARY_FILE), "w") as handle:
        handle.write("\n".join(lines) + "\n")
