"""Our Table 1 and Table 2 next to the DAS paper's, from a folder of run folders.

    python -m tools.paper_tables --runs Training_Results --out results/tables

Every run folder under ``--runs`` (any depth; a folder with ``config.json`` and ``metrics.csv``)
is placed in a cell of the paper's tables by its configuration, not by its folder name:

* Table 1: ``--loss multisimilarity``, ``--embed_dim 512``, a ``double`` arch on bninception or
  resnet50 (columns ``bninception_512``, ``resnet50_512``);
* Table 2: a resnet50 arch without ``double`` and ``--embed_dim 128``; the method is
  ``<loss>+<batch_mining>`` (multi-similarity: ``multisimilarity+none``, it has no miner), one of
  those listed in ``tools/table2_methods.tsv`` (shared with ``table2.sh``);
* baseline or + DAS: ``--embedding_producer_used``; the dataset: ``--dataset``.

Written to ``--out``: ``table1.md``, ``table2.md`` (the paper's layout, one section with the last
epoch's figures and one with the best epoch's), ``table{1,2}_{last,best}.csv`` (the same layout as
CSV) and ``runs.csv`` (every run folder found, the cell it fills, its epochs, or why it fits none).
Each cell shows our figure, the paper's and the difference (ours - paper) in percentage points.
A cell without a run is shown as missing (``-`` in markdown, empty in CSV), never as zero.
Runs of a cell that differ only in ``--seed`` (``tools._seed_groups``, the grouping of
``tools.summarize``) are averaged: ``mean +- std (n seeds)`` in markdown; in CSV the ``ours`` row
holds the mean, a ``std`` row the sample standard deviation and ``<dataset>/seeds`` the number
of seeds.

"Best" has two conventions (``--best``; the headings and the CSV's ``selected_by`` say which):

* ``per_metric`` (default, the published code's: its summary, utilities/logger.py, reports every
  metric's own maximum over the epochs): each test figure is its own maximum over trained epochs,
  so R@1 and NMI of one row may come from different epochs;
* ``storage_metric``: every figure of the one epoch with the highest selection metric, the rule
  ``main.py`` uses for ``checkpoint_best.pth``: ``<split>/<--storage_metric>`` with split ``val``
  when the run has a validation split (``--use_tv_split``) and ``test`` otherwise.

Both select on the test split unless a run has a validation split, which flatters the figures;
the last epoch's do not.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import datasets
from architectures import parse_arch
from tools._common import atomic_output, write_text, written_by_tools
from utilities import run_folder as rf
from utilities.errors import UserError, run_command
from utilities.registry import UnknownNameError
from tools._seed_groups import group_by_settings, mean_std

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_RESULTS = os.path.join(REPO_ROOT, "data", "das_paper_results.csv")
PAPER_COLUMNS = ["table", "method", "backbone", "das", "dataset", "metric", "value"]

# The paper's dataset columns; each dataset's title and Recall@K list are its own (datasets/).
DATASETS = ("cub200", "cars196", "online_products")
DATASET_TITLES = {name: datasets.REGISTRY.get(name).heading for name in DATASETS}
TABLE1_METRICS = {name: tuple(f"recall@{k}" for k in datasets.REGISTRY.get(name).recall_ks)
                  for name in DATASETS}
TABLE2_METRICS = {name: ("recall@1", "f1", "nmi") for name in DATASETS}
TABLE1_BACKBONES = (("bninception_512", "BN-Inception 512"), ("resnet50_512", "ResNet50 512"))
TABLE2_BACKBONE = "resnet50_128"
TABLE2_METHODS_FILE = os.path.join(REPO_ROOT, "tools", "table2_methods.tsv")
METRIC_TITLES = {"f1": "F1", "nmi": "NMI"}
MISSING = "-"
MODES = ("last", "best")
BEST_CHOICES = ("per_metric", "storage_metric")
DEFAULT_BEST = "per_metric"  # the published convention (utilities/logger.py of the DAS code)


class TablesError(UserError, ValueError):
    """Bad input to the tool (paper file, runs folder); the message names the path."""


@dataclass(frozen=True)
class Table2Method:
    """One method of Table 2, a line of tools/table2_methods.tsv (also read by table2.sh)."""

    name: str  # table2.sh's row word, e.g. "triplet_semihard"
    loss: str
    batch_mining: Optional[str]  # None: the loss picks its own pairs (no --batch_mining)
    arch: str
    label: str  # the paper's row label, e.g. "Triplet [S]"

    @property
    def key(self) -> str:
        """The method column of data/das_paper_results.csv: ``<loss>+<miner or none>``."""
        return f"{self.loss}+{self.batch_mining or 'none'}"


def read_table2_methods(path: str = TABLE2_METHODS_FILE) -> Tuple[Table2Method, ...]:
    """Table 2's methods in the paper's order, from the tab-separated list shared with table2.sh
    ('#' lines are comments; batch_mining '-' means none)."""
    methods = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 5 or not all(fields):
                raise TablesError(f"'{path}' line {number}: expected 5 tab-separated columns "
                                  f"(method, loss, batch_mining, arch, label), got: {line}")
            name, loss, mining, arch, label = fields
            methods.append(Table2Method(name, loss, None if mining == "-" else mining, arch, label))
    return tuple(methods)


TABLE2_METHODS = read_table2_methods()
MINERLESS_LOSSES = tuple(m.loss for m in TABLE2_METHODS if m.batch_mining is None)


@dataclass(frozen=True)
class RowKey:
    """One row of a paper table: Table 1 (multisimilarity, backbone) or Table 2 (method)."""

    table: int
    method: str
    backbone: str
    das: bool


@dataclass
class Run(rf.RunRecord):
    """One run folder, read (see utilities.run_folder.RunRecord), and where it belongs."""

    row_key: Optional[RowKey] = None
    dataset: str = ""
    reason: str = ""  # why it fits no cell
    used: bool = False


def identify(config: Dict) -> Tuple[Optional[RowKey], str, str]:
    """``(row, dataset, reason)``: the table row and dataset column a run belongs to, or None
    and why it fits none."""
    dataset = config.get("dataset", "")
    if dataset not in DATASETS:
        return None, dataset, f"dataset '{dataset}' is not in the paper's tables"
    try:
        spec = parse_arch(config.get("arch", ""))
    except UnknownNameError as error:
        return None, dataset, str(error)
    backbone, words = spec.backbone, spec.words
    embed_dim = int(config.get("embed_dim", 0))
    das = bool(config.get("embedding_producer_used", False))
    loss = config.get("loss", "")
    backbone_key = f"{backbone}_{embed_dim}"
    if "double" in words:
        if loss != "multisimilarity":
            return None, dataset, (f"a double-pooling arch with --loss {loss}; Table 1 is "
                                   f"multisimilarity")
        if backbone_key not in dict(TABLE1_BACKBONES):
            return None, dataset, (f"arch '{config.get('arch')}' with --embed_dim {embed_dim}; "
                                   f"Table 1 has bninception or resnet50 at 512")
        return RowKey(1, loss, backbone_key, das), dataset, ""
    if backbone_key != TABLE2_BACKBONE:
        return None, dataset, (f"arch '{config.get('arch')}' with --embed_dim {embed_dim}; Table 2 "
                               f"is resnet50 at 128 without double pooling, Table 1 uses double "
                               f"pooling at 512")
    miner = "none" if loss in MINERLESS_LOSSES else config.get("batch_mining", "")
    method = f"{loss}+{miner}"
    if method not in {m.key for m in TABLE2_METHODS}:
        return None, dataset, (f"--loss {loss} with --batch_mining {miner} is not a Table 2 "
                               f"method ({', '.join(m.key for m in TABLE2_METHODS)})")
    return RowKey(2, method, TABLE2_BACKBONE, das), dataset, ""


# ----------------------------------------------------------------------------- reading
def read_paper(path: str = PAPER_RESULTS) -> Dict[Tuple[RowKey, str, str], float]:
    """``(row, dataset, metric) -> value`` in percent, from the repository's copy."""
    if not os.path.isfile(path):
        raise TablesError(f"paper results file '{path}' does not exist; expected the CSV with "
                          f"columns {','.join(PAPER_COLUMNS)}")
    figures = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != PAPER_COLUMNS:
            raise TablesError(f"'{path}' has columns {reader.fieldnames}; expected {PAPER_COLUMNS}")
        for number, line in enumerate(reader, start=2):
            try:
                key = RowKey(int(line["table"]), line["method"], line["backbone"],
                             {"yes": True, "no": False}[line["das"]])
                figures[(key, line["dataset"], line["metric"])] = float(line["value"])
            except (KeyError, ValueError):
                raise TablesError(f"'{path}' line {number} is malformed: {line}") from None
    return figures


# Types of the config.json keys this tool reads (a key may be absent: the run fits no cell).
CONFIG_TYPES = {"dataset": str, "arch": str, "loss": str, "batch_mining": str,
                "storage_metric": (str, type(None)), "embed_dim": int, "n_epochs": int,
                "embedding_producer_used": bool}


def check_config(config) -> None:
    """Raise ValueError naming the key when config.json is not an object or a key the tables
    read has another type."""
    if not isinstance(config, dict):
        raise ValueError(f"config.json holds a JSON {type(config).__name__}, not an object")
    for key, kind in CONFIG_TYPES.items():
        value = config.get(key)
        if key in config and (not isinstance(value, kind) or
                              (kind is int and isinstance(value, bool))):
            raise ValueError(f"config.json key '{key}' has the ill-typed value {value!r}")


def read_run(folder: str) -> Run:
    """The run in ``folder``; a damaged config.json or metrics.csv leaves it out of every cell
    with a warning naming the folder and the problem (the other runs still make the tables)."""
    try:
        with open(os.path.join(folder, "config.json")) as handle:
            try:
                config = json.load(handle)
            except ValueError as error:
                raise ValueError(f"config.json is not valid JSON ({error})") from None
        check_config(config)
        rows = rf.read_metrics(os.path.join(folder, rf.METRICS_FILE))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        print(f"warning: skipping run folder '{folder}': {error}", file=sys.stderr)
        run = Run(folder, {}, [])
        run.reason = f"skipped, damaged: {error}"
        return run
    run = Run(folder, config, rows, mtime=os.path.getmtime(os.path.join(folder, "metrics.csv")))
    run.row_key, run.dataset, run.reason = identify(config)
    if run.row_key is not None and not run.trained_rows:
        run.reason, run.row_key = "no trained epoch in metrics.csv yet", None
    return run


def assign_cells(runs: Sequence[Run]) -> Dict[Tuple[RowKey, str], List[Run]]:
    """The runs of each (row, dataset): those of one group of runs that differ only in
    ``--seed`` (tools._seed_groups), one run per seed. Between duplicates of a seed and between
    groups: finished before unfinished, then more seeds, more epochs, newer."""
    candidates: Dict[Tuple[RowKey, str], List[Run]] = {}
    for run in runs:
        if run.row_key is not None:
            candidates.setdefault((run.row_key, run.dataset), []).append(run)

    def preference(run: Run):
        return run.finished, run.epochs_done, run.mtime

    chosen = {}
    for cell, members in candidates.items():
        groups = []
        for group in group_by_settings(members).values():
            per_seed: Dict[str, Run] = {}
            for run in group:
                key = json.dumps(run.config.get("seed"))
                if key not in per_seed or preference(run) > preference(per_seed[key]):
                    per_seed[key] = run
            groups.append(sorted(per_seed.values(), key=lambda r: json.dumps(r.config.get("seed"))))
        best = max(groups, key=lambda g: (sum(r.finished for r in g), len(g),
                                          max(r.epochs_done for r in g), max(r.mtime for r in g)))
        for run in members:
            if any(run is kept for kept in best):
                run.used = True
            else:
                run.reason = f"another run fills this cell: {best[0].folder}"
        chosen[cell] = best
    return chosen


# ----------------------------------------------------------------------------- tables
@dataclass
class TableLayout:
    number: int
    rows: List[Tuple[RowKey, str]]  # (row key, label)
    metrics: Dict[str, Sequence[str]]  # dataset -> metric names (columns)


def table_layouts() -> List[TableLayout]:
    rows1 = [(RowKey(1, "multisimilarity", backbone, das), f"MS{' + DAS' if das else ''}, {label}")
             for backbone, label in TABLE1_BACKBONES for das in (False, True)]
    rows2 = [(RowKey(2, m.key, TABLE2_BACKBONE, das), f"{m.label}{' + DAS' if das else ''}")
             for m in TABLE2_METHODS for das in (False, True)]
    return [TableLayout(1, rows1, TABLE1_METRICS), TableLayout(2, rows2, TABLE2_METRICS)]


def metric_title(metric: str) -> str:
    if metric.startswith("recall@"):
        return "R@" + metric.split("@", 1)[1]
    return METRIC_TITLES.get(metric, metric)


@dataclass
class Figures:
    """One table row's three figure lines; values in percent, None when missing."""

    ours: Dict[Tuple[str, str], Optional[float]] = field(default_factory=dict)  # mean over seeds
    std: Dict[Tuple[str, str], Optional[float]] = field(default_factory=dict)  # None: one seed
    seeds: Dict[Tuple[str, str], int] = field(default_factory=dict)  # runs averaged
    runs: Dict[str, int] = field(default_factory=dict)  # runs (seeds) of each dataset's cell
    paper: Dict[Tuple[str, str], Optional[float]] = field(default_factory=dict)
    epochs: Dict[str, str] = field(default_factory=dict)  # "3", or "3/4" across seeds
    unfinished: Dict[str, bool] = field(default_factory=dict)
    selected_by: Dict[str, str] = field(default_factory=dict)

    def diff(self, column: Tuple[str, str]) -> Optional[float]:
        ours, paper = self.ours.get(column), self.paper.get(column)
        return None if ours is None or paper is None else ours - paper


def collect(layout: TableLayout, mode: str, cells: Dict[Tuple[RowKey, str], List[Run]],
            paper: Dict[Tuple[RowKey, str, str], float],
            best: str = DEFAULT_BEST) -> List[Tuple[RowKey, str, Figures]]:
    """One table's figures: the last epoch's, or the best by ``best`` (see the module doc), each
    the mean over the cell's seeds. With ``per_metric`` the epoch column holds the last epoch
    searched."""
    per_metric = mode == "best" and best == "per_metric"
    table = []
    for row_key, label in layout.rows:
        figures = Figures()
        for dataset, metrics in layout.metrics.items():
            runs = cells.get((row_key, dataset), [])
            picked = [(run, run.pick("last" if per_metric else mode)) for run in runs]
            picked = [(run, row) for run, row in picked if row is not None]
            epochs = sorted({int(row["epoch"]) for _, row in picked})
            figures.epochs[dataset] = "/".join(str(e) for e in epochs)
            figures.runs[dataset] = len(picked)
            figures.unfinished[dataset] = any(not run.finished for run, _ in picked)
            if picked and mode == "best":
                figures.selected_by[dataset] = ("per_metric" if per_metric
                                                else picked[0][0].selection_key)
            for metric in metrics:
                if per_metric:
                    raw = [run.max_per_metric(f"test/{metric}") for run, _ in picked]
                else:
                    raw = [row.get(f"test/{metric}") for _, row in picked]
                values = [100.0 * value for value in raw
                          if value is not None and not math.isnan(value)]
                mean, std = mean_std(values) if values else (None, None)
                figures.ours[(dataset, metric)], figures.std[(dataset, metric)] = mean, std
                figures.seeds[(dataset, metric)] = len(values)
                figures.paper[(dataset, metric)] = paper.get((row_key, dataset, metric))
        table.append((row_key, label, figures))
    return table


def _fmt(value: Optional[float], signed: bool = False, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def selection_summary(table: List[Tuple[RowKey, str, Figures]]) -> str:
    counts: Dict[str, int] = {}
    for _, _, figures in table:
        for key in figures.selected_by.values():
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "no run"
    return ", ".join(f"{key} (split '{key.split('/')[0]}', {n} run{'s' if n > 1 else ''})"
                     for key, n in sorted(counts.items()))


def markdown(layout: TableLayout, mode: str, table: List[Tuple[RowKey, str, Figures]],
             best: str = DEFAULT_BEST) -> str:
    columns = [(d, m) for d, metrics in layout.metrics.items() for m in metrics]
    lines = []
    if mode == "last":
        lines.append(f"### Table {layout.number}, last epoch")
    elif best == "per_metric":
        lines.append(f"### Table {layout.number}, best per metric (--best per_metric)")
        lines.append("")
        lines.append("Each figure is that metric's own maximum over the trained epochs on the test "
                     "split, the published code's convention: figures of one row may come from "
                     "different epochs. An optimistic figure; compare with the last epoch's.")
    else:
        lines.append(f"### Table {layout.number}, best epoch by the storage metric "
                     f"(--best storage_metric)")
        lines.append("")
        lines.append(f"Best epoch selected by {selection_summary(table)}.")
        if any(k.startswith("test/") for _, _, f in table for k in f.selected_by.values()):
            lines.append("Selected on the test split itself (as the paper's code does): an "
                         "optimistic figure; compare with the last epoch's.")
    lines.append("")
    header = ["Method", ""] + [f"{DATASET_TITLES[d]} {metric_title(m)}" for d, m in columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * len(columns)) + "|")
    any_unfinished = any_seeds = False
    for _, label, figures in table:
        ours = []
        for dataset, metric in columns:
            text = _fmt(figures.ours[(dataset, metric)]) or MISSING
            if figures.std.get((dataset, metric)) is not None:  # several seeds
                text += f" \u00b1 {_fmt(figures.std[(dataset, metric)])} " \
                        f"({figures.seeds[(dataset, metric)]})"
                any_seeds = True
            if figures.unfinished.get(dataset) and text != MISSING:
                text += "*"
                any_unfinished = True
            ours.append(text)
        lines.append("| " + " | ".join([label, "ours"] + ours) + " |")
        lines.append("| " + " | ".join(["", "paper"] + [_fmt(figures.paper[c]) or MISSING
                                                         for c in columns]) + " |")
        lines.append("| " + " | ".join(["", "diff"] + [_fmt(figures.diff(c), signed=True) or MISSING
                                                        for c in columns]) + " |")
    lines.append("")
    notes = [f"Percent; diff = ours - paper in points; {MISSING} = no run (or no figure)."]
    if any_seeds:
        notes.append("mean \u00b1 std (number of seeds): runs that differ only in --seed, "
                     "sample standard deviation.")
    if any_unfinished:
        notes.append("* from a run that has not reached its last epoch (see runs.csv).")
    lines += notes
    return "\n".join(lines) + "\n"


def write_csv(path: str, layout: TableLayout, mode: str,
              table: List[Tuple[RowKey, str, Figures]]) -> None:
    columns = [(d, m) for d, metrics in layout.metrics.items() for m in metrics]
    header = ["table", "method", "backbone", "das", "figure"] + [f"{d}/{m}" for d, m in columns]
    header += [f"{d}/epoch" for d in layout.metrics]
    header += [f"{d}/seeds" for d in layout.metrics]
    if mode == "best":
        header += [f"{d}/selected_by" for d in layout.metrics]
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row_key, _, figures in table:
            base = [row_key.table, row_key.method, row_key.backbone, "yes" if row_key.das else "no"]
            extra_ours = [figures.epochs.get(d) or "" for d in layout.metrics]
            extra_ours += [figures.runs.get(d) or "" for d in layout.metrics]
            if mode == "best":
                extra_ours += [figures.selected_by.get(d, "") for d in layout.metrics]
            blank = [""] * (len(header) - 5 - len(columns))
            writer.writerow(base + ["ours"] + [_fmt(figures.ours[c], digits=4) for c in columns]
                            + extra_ours)
            writer.writerow(base + ["paper"] + [_fmt(figures.paper[c]) for c in columns] + blank)
            writer.writerow(base + ["diff"] + [_fmt(figures.diff(c), signed=True, digits=4)
                                               for c in columns] + blank)
            writer.writerow(base + ["std"] + [_fmt(figures.std.get(c), digits=4)
                                              for c in columns] + blank)


def write_runs(path: str, runs: Sequence[Run]) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["folder", "used", "table", "method", "backbone", "das", "dataset",
                         "epochs_done", "n_epochs", "finished", "last_epoch", "best_epoch",
                         "selected_by", "note"])
        for run in runs:
            key = run.row_key
            last, best = run.pick("last"), run.pick("best")
            writer.writerow([run.folder, "yes" if run.used else "no",
                             key.table if key else "", key.method if key else "",
                             key.backbone if key else "",
                             ("yes" if key.das else "no") if key else "", run.dataset,
                             run.epochs_done, run.n_epochs if run.n_epochs is not None else "",
                             "yes" if run.finished else "no",
                             int(last["epoch"]) if last else "", int(best["epoch"]) if best else "",
                             run.selection_key if run.rows else "", run.reason])


def output_names() -> List[str]:
    """The files build_tables writes into --out."""
    names = [f"table{layout.number}{part}" for layout in table_layouts()
             for part in [".md"] + [f"_{mode}.csv" for mode in MODES]]
    return names + ["runs.csv"]


def check_out_folder(out: str) -> None:
    """Refuse, before anything is read or written, an --out that is a file or a run folder, or
    that holds a file of an output's name that this tool did not write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise TablesError(f"--out '{out}' is a file; expected a folder for the tables")
    if rf.is_run_folder(out):
        raise TablesError(f"--out '{out}' is a run folder of main.py; write the tables elsewhere")
    for name in output_names():
        path = os.path.join(out, name)
        if os.path.lexists(path) and not (os.path.isfile(path) and written_by_tools(path)):
            raise TablesError(f"--out: '{path}' exists and was not written by "
                              f"tools.paper_tables; refusing to write over it (choose another "
                              f"--out folder)")


def build_tables(runs_root: str, out: str, paper_path: str = PAPER_RESULTS,
                 best: str = DEFAULT_BEST) -> Tuple[Dict[str, str], List[Run]]:
    """Read the runs, write every output file; returns (output name -> path, the runs read).
    ``best``: ``per_metric`` or ``storage_metric``, how the "best" figures are chosen."""
    if best not in BEST_CHOICES:
        raise TablesError(f"--best '{best}' is not one of {', '.join(BEST_CHOICES)}")
    check_out_folder(out)
    paper = read_paper(paper_path)
    runs = [read_run(folder) for folder in rf.find_run_folders(runs_root)]
    cells = assign_cells(runs)
    os.makedirs(out, exist_ok=True)
    written = {}
    for layout in table_layouts():
        sections = [f"## Table {layout.number}: ours vs the DAS paper (ECCV 2022)\n",
                    f"Run folders under `{runs_root}`; generated by `python -m "
                    f"tools.paper_tables`.\n"]
        if layout.number == 1:
            sections.append("The paper's baseline figures (MS\u2020 there) come from its own "
                            "re-implementation of multi-similarity.\n")
        for mode in MODES:
            table = collect(layout, mode, cells, paper, best)
            sections.append(markdown(layout, mode, table, best))
            name = f"table{layout.number}_{mode}.csv"
            write_csv(os.path.join(out, name), layout, mode, table)
            written[name] = os.path.join(out, name)
        name = f"table{layout.number}.md"
        write_text(os.path.join(out, name), "\n".join(sections))
        written[name] = os.path.join(out, name)
    write_runs(os.path.join(out, "runs.csv"), runs)
    written["runs.csv"] = os.path.join(out, "runs.csv")
    return written, runs


def summary_lines(runs: Sequence[Run], out: str) -> Iterable[str]:
    cells = {(r.row_key, r.dataset) for r in runs if r.used}
    for layout in table_layouts():
        total = len(layout.rows) * len(layout.metrics)
        filled = sum((key, d) in cells for key, _ in layout.rows for d in layout.metrics)
        yield f"Table {layout.number}: {filled} of {total} (row, dataset) cells have a run"
    unmatched = [r for r in runs if r.row_key is None]
    if unmatched:
        yield f"{len(unmatched)} run folder(s) fit no cell (see {os.path.join(out, 'runs.csv')})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the DAS paper's Tables 1 and 2 with our figures, the paper's and the "
                    "difference, from a folder of run folders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", required=True,
                        help="Folder searched (any depth) for run folders.")
    parser.add_argument("--out", required=True, help="Folder for the markdown and CSV tables.")
    parser.add_argument("--paper", default=PAPER_RESULTS, help="The paper's figures (CSV).")
    parser.add_argument("--best", default=DEFAULT_BEST, choices=BEST_CHOICES,
                        help="The 'best' figures: per_metric = each metric's own maximum over "
                             "epochs (the published convention); storage_metric = every figure "
                             "of the epoch with the best --storage_metric (main.py's "
                             "checkpoint_best.pth).")
    args = parser.parse_args(argv)

    def command() -> int:
        written, runs = build_tables(args.runs, args.out, args.paper, args.best)
        for line in summary_lines(runs, args.out):
            print(line)
        for path in written.values():
            print(f"wrote {path}")
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
