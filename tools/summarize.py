"""Mean +- standard deviation over seeds, from a folder of run folders.

    python -m tools.summarize RUNS_DIR [--mode last|best] [--metrics test/recall@1 ...] [--csv FILE]

Every run folder under RUNS_DIR (any depth: a folder holding config.json and metrics.csv) is read
with utilities.run_folder. Runs whose configurations are equal except for ``--seed`` (and the
bookkeeping options in ``NOT_SETTINGS``, which do not change the figures: run names, paths,
device, worker count, logging interval) form one group. For each group and metric column
(``test/...``, ``val/...``; default: every one present), the figure of each run (its last epoch,
or its best epoch by the rule main.py uses for checkpoint_best.pth) is averaged over the seeds:
``mean +- std (n)``, std being the sample standard deviation (n - 1 in the denominator), the
convention of Revisiting-DML's result tables. Figures in [0, 1] are shown in percent; the
distance ratios and spectral divergences (``dists@*``, ``rho_spectrum@*``) as they are.
Each group is labelled by the options whose values differ between groups. A run that stopped
before its ``--n_epochs`` is never averaged with finished ones: such runs form their own row,
labelled ``stopped early`` with each seed's last epoch.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from tools._common import atomic_output, check_output
from utilities import run_folder as rf
from utilities.errors import UserError, run_command
from utilities.run_folder import RunRecord as Run
from tools._seed_groups import NOT_SETTINGS, group_by_settings, mean_std, settings_of  # noqa: F401

MODES = ("last", "best")
RAW_METRICS = ("dists@", "rho_spectrum@")  # not in [0, 1]: shown as they are, not in percent


class SummarizeError(UserError, ValueError):
    """Bad input (folder, metric name); the message names it."""


@dataclass
class Group:
    """Runs sharing every setting but the seed."""

    settings: Dict
    runs: List[Run] = field(default_factory=list)
    stopped_early: bool = False  # runs whose last epoch is before their --n_epochs

    @property
    def seeds(self) -> List:
        return sorted(run.config.get("seed") for run in self.runs)


def read_runs(root: str) -> List[Run]:
    runs = []
    for folder in rf.find_run_folders(root):
        try:
            runs.append(rf.read_run(folder, strict=False))
        except (OSError, ValueError) as error:
            print(f"skipped {folder}: unreadable ({error})", file=sys.stderr)
    return runs


def group_runs(runs: Sequence[Run]) -> List[Group]:
    """Runs equal but for the seed; in each, the runs that stopped before their --n_epochs are
    split off into a group of their own (``stopped_early``), never averaged with finished ones."""
    groups = []
    for members in group_by_settings(runs).values():
        settings = {k: v for k, v in members[0].config.items() if k not in NOT_SETTINGS}
        early = [run.n_epochs is not None and not run.finished for run in members]
        finished = [run for run, stop in zip(members, early) if not stop]
        stopped = [run for run, stop in zip(members, early) if stop]
        if finished:
            groups.append(Group(settings, finished))
        if stopped:
            groups.append(Group(settings, stopped, stopped_early=True))
    return groups


def labels(groups: Sequence[Group]) -> List[str]:
    """Each group's options that differ between groups (``k=v`` joined by spaces), and for runs
    stopped early ``stopped early: seed S at epoch E of N``."""
    keys = sorted({k for g in groups for k in g.settings})
    varying = [k for k in keys if len({json.dumps(g.settings.get(k), sort_keys=True)
                                       for g in groups}) > 1]
    result = []
    for group in groups:
        label = " ".join(f"{k}={group.settings.get(k)}" for k in varying) or "all runs"
        if group.stopped_early:
            stops = ", ".join(f"seed {run.config.get('seed')} at epoch {run.epochs_done} of "
                              f"{run.n_epochs}" for run in group.runs)
            label = f"{label} (stopped early: {stops})"
        result.append(label)
    return result


def metric_columns(runs: Sequence[Run]) -> List[str]:
    found = {k for run in runs for row in run.rows for k in row
             if k.startswith(("test/", "val/", "train/"))}
    return sorted(found)


def summarize(groups: Sequence[Group], columns: Sequence[str],
              mode: str) -> List[Dict[str, object]]:
    """One dict per group: label, seeds, and per column (mean, std or None, n)."""
    table = []
    for group, label in zip(groups, labels(groups)):
        entry: Dict[str, object] = {"group": label, "seeds": group.seeds}
        for column in columns:
            values = []
            for run in group.runs:
                row = run.pick(mode)
                value = None if row is None else row.get(column)
                if value is not None and not math.isnan(value):
                    values.append(value)
            entry[column] = (*mean_std(values), len(values)) if values else None
        table.append(entry)
    return table


def format_cell(column: str, cell) -> str:
    if cell is None:
        return "-"
    mean, std, count = cell
    scale = 1.0 if column.split("/")[-1].startswith(RAW_METRICS) else 100.0
    digits = 4 if scale == 1.0 else 2
    spread = "" if std is None else f" +- {std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}{spread} ({count})"


def markdown(table: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    header = ["group", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [str(entry["group"]), " ".join(str(s) for s in entry["seeds"])]
        cells += [format_cell(c, entry[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str, table: Sequence[Dict[str, object]], columns: Sequence[str]) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "seeds"] + [f"{c} {part}" for c in columns
                                              for part in ("mean", "std", "n")])
        for entry in table:
            row = [entry["group"], " ".join(str(s) for s in entry["seeds"])]
            for column in columns:
                cell = entry[column]
                row += ["", "", 0] if cell is None else [cell[0], "" if cell[1] is None
                                                         else cell[1], cell[2]]
            writer.writerow(row)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.summarize",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", help="folder of run folders (e.g. Training_Results)")
    parser.add_argument("--mode", choices=MODES, default="last",
                        help="each run's last epoch, or its best by --storage_metric")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metric columns (default: every test/, val/, train/ column)")
    parser.add_argument("--csv", default=None, help="also write the table as CSV to this file")
    args = parser.parse_args(argv)

    def command() -> int:
        if not os.path.isdir(args.runs):
            raise SummarizeError(f"RUNS_DIR '{args.runs}' is not a folder; expected a folder of "
                                 f"run folders (e.g. Training_Results)")
        if args.csv:
            check_output(args.csv, "--csv", (".csv",))
        runs = read_runs(args.runs)
        if not runs:
            raise SummarizeError(f"no run folder (config.json and metrics.csv) under "
                                 f"'{args.runs}'")
        available = metric_columns(runs)
        columns = args.metrics or available
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise SummarizeError(f"--metrics {' '.join(unknown)}: no such column in the runs' "
                                 f"metrics.csv; available: {', '.join(available)}")
        groups = group_runs(runs)
        table = summarize(groups, columns, args.mode)
        print(markdown(table, columns))
        if any(group.stopped_early for group in groups):
            print("Runs that stopped before their --n_epochs are in rows of their own (stopped "
                  "early), not averaged with finished runs; resume them with main.py --resume.")
        if args.csv:
            write_csv(args.csv, table, columns)
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
