"""Run the rows of a table script (``table1.sh``, ``table2.sh``): select, skip, resume, train.

The table scripts list their rows and pipe them here, one row per line::

    <dataset> <key> <variant> -- <main.py options...>      (shell-quoted words)

A row's run folder is ``--save_path/<dataset>_<key>_<variant>``, so a rerun finds it again:

* finished (``metrics.csv`` has the row's last epoch): skipped;
* unfinished with ``checkpoint_last.pth``: continued with ``main.py --resume``;
* unfinished without a checkpoint (killed before its first epoch ended): moved aside to
  ``<folder>.incomplete-<time>`` and trained afresh;
* made with other settings than the row's (an edited script, other extra options): left alone
  and reported, since skipping or continuing it would mix two experiments.

Every row's options are parsed and its dataset folder checked before anything runs, so a typo or
a wrong data root stops the sweep at once. The exit status is 0 only if every selected row ends
finished. ``--smoke`` turns every row into a one-epoch CPU run on tiny data (see ``SMOKE_OPTIONS``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import architectures
import main as training
from parameters import parse_options
from utilities import run_folder as rf
from utilities.errors import UserError
from utilities.registry import UnknownNameError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_SCRIPT = os.path.join(REPO_ROOT, "main.py")

# What the dataset folder under DATA_ROOT must hold (checked before anything runs).
DATASET_LAYOUT = {
    "cub200": ("images",),
    "cars196": ("images",),
    "online_products": ("images", "Info_Files"),
    "in-shop": ("img", "Eval"),
}
DATASET_ALIASES = {"cub": "cub200", "cars": "cars196", "sop": "online_products"}
VARIANT_ALIASES = {"base": "baseline"}

# SMOKE=1: one epoch on tiny generated data, on CPU, small and quick. The backbone is swapped
# (its option words frozen/normalize/double are kept) and the batch made to fit 8 classes; every
# other option of the row (loss, miner, DAS settings, embedding size, ...) stays as in the paper.
SMOKE_OPTIONS = ["--n_epochs", "1", "--not_pretrained", "--kernels", "0", "--crop_size", "32",
                 "--bs", "16", "--eval_bs", "64", "--device", "cpu"]
SMOKE_BACKBONE = "tinycnn"

# Options that may differ between a run folder and its row without making it another experiment.
VOLATILE_OPTIONS = {"n_epochs", "kernels", "gpu", "device", "log_every", "save_path", "savename",
                    "resume", "source", "evaluate_on_gpu", "no_train_metrics", "eval_bs",
                    "world_size", "train_classes", "train_images", "compile", "no_amp",
                    "train_metrics"}  # train-split metrics change time only (docs/PARITY.md)


class SweepError(UserError, ValueError):
    """Bad sweep input; the message says what to fix. Nothing has run when it is raised."""


@dataclass
class Row:
    tags: Tuple[str, str, str]  # dataset, key (backbone or method), variant (baseline or das)
    args: List[str]
    options: Optional[argparse.Namespace] = None
    status: str = ""
    outcome: str = ""
    extra: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "_".join(self.tags)

    @property
    def dataset(self) -> str:
        return self.tags[0]


def read_rows(lines: Sequence[str]) -> List[Row]:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as error:  # an unterminated quote or a trailing backslash
            raise SweepError(f"row line {number} cannot be split into words ({error}): "
                             f"{line.strip()}") from None
        if "--" not in words or words.index("--") != 3:
            raise SweepError(f"row line {number} must be '<dataset> <key> <variant> -- <options>', "
                             f"got: {line.strip()}")
        rows.append(Row(tuple(words[:3]), words[4:]))
    names = [row.name for row in rows]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SweepError(f"row names must be unique; repeated: {', '.join(duplicates)}")
    return rows


# ----------------------------------------------------------------------------- selection
def _word_matches(word: str, position: int, tag: str) -> bool:
    if position == 0:
        return DATASET_ALIASES.get(word, word) == tag
    if position == 2:
        return VARIANT_ALIASES.get(word, word) == tag
    return word == tag or word in tag.split("_")


def select_rows(rows: Sequence[Row], words: Sequence[str],
                script: str = "the table script") -> List[Row]:
    """Rows chosen by words: a dataset, a backbone/method (or one of its parts, e.g. 'triplet'),
    a variant (baseline, das) or a full row name. Words of one kind widen the choice, words of
    different kinds narrow it: ``cub200 cars196 das`` = the + DAS rows of both datasets."""
    if not words:
        return list(rows)
    by_position: Dict[int, List[str]] = {}
    names = []
    for word in words:
        if any(row.name == word for row in rows):
            names.append(word)
            continue
        positions = [p for p in range(3)
                     if any(_word_matches(word, p, row.tags[p]) for row in rows)]
        if not positions:
            kinds = [sorted({row.tags[p] for row in rows}) for p in range(3)]
            raise SweepError(
                f"{script}: unknown row word '{word}'. Choose rows by dataset "
                f"({' '.join(kinds[0])}; or cub, cars, sop), by backbone/method "
                f"({' '.join(kinds[1])}; or a part of it), by variant ({' '.join(kinds[2])}), "
                f"or by a full row name such as {rows[-1].name}")
        by_position.setdefault(positions[0], []).append(word)

    def chosen(row: Row) -> bool:
        if row.name in names:
            return True
        if not by_position:
            return False
        return all(any(_word_matches(w, p, row.tags[p]) for w in ws)
                   for p, ws in by_position.items())

    return [row for row in rows if chosen(row)]


# ----------------------------------------------------------------------------- options
def smoke_args(args: Sequence[str], backbone: str = SMOKE_BACKBONE) -> List[str]:
    """The row's options with the backbone swapped for ``backbone`` and SMOKE_OPTIONS appended."""
    args = list(args)
    for index, word in enumerate(args[:-1]):
        if word == "--arch":
            try:
                args[index + 1] = architectures.with_backbone(args[index + 1], backbone)
            except UnknownNameError as error:
                raise SweepError(str(error)) from None
    return args + SMOKE_OPTIONS


def parse_row_options(row: Row) -> argparse.Namespace:
    argv = row.args + row.extra
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):  # argparse prints its whole usage first
            return parse_options(argv)
    except SystemExit:
        reason = (messages.getvalue().strip().splitlines() or ["invalid options"])[-1]
        reason = reason.split(": error: ", 1)[-1]
        raise SweepError(f"row {row.name}: main.py refuses its options ({reason}): "
                         f"{shlex.join(argv)}") from None


def check_data_roots(rows: Sequence[Row], script: str) -> None:
    """Every selected row's ``--source`` must hold its dataset's folder; one message for all."""
    problems = {}
    for row in rows:
        source, dataset = row.options.source, row.options.dataset
        if source is None:
            problems[(None, dataset)] = f"row {row.name} has no --source"
            continue
        folder = os.path.join(source, dataset)
        expected = DATASET_LAYOUT.get(dataset, ())
        missing = [part for part in expected if not os.path.isdir(os.path.join(folder, part))]
        if not os.path.isdir(folder):
            problems[(source, dataset)] = f"'{folder}' does not exist"
        elif missing:
            lacking = ", ".join(m + "/" for m in missing)
            problems[(source, dataset)] = (f"'{folder}' lacks {lacking} (expected "
                                           f"{dataset}/{' and '.join(expected)})")
    if problems:
        sources = sorted({str(s) for s, _ in problems})
        present = sorted(d for d in DATASET_LAYOUT
                         if sources and os.path.isdir(os.path.join(sources[0], d)))
        hint = (f"; it holds {', '.join(present)}: choose those rows, e.g. "
                f"'bash {script} DATA_ROOT {present[0]}'" if present else
                "; DATA_ROOT must be the folder that holds cub200/, cars196/, online_products/")
        raise SweepError(f"{script}: DATA_ROOT {', '.join(repr(s) for s in sources)} does not fit "
                         f"the selected rows: " + "; ".join(problems.values()) + hint)


# ----------------------------------------------------------------------------- run folders
def last_epoch(folder: str) -> int:
    """The highest epoch in the folder's metrics.csv (0 when none)."""
    if not os.path.isfile(os.path.join(folder, rf.METRICS_FILE)):
        return 0
    return rf.RunRecord(folder, {}, rf.read_metrics_lenient(folder)).epochs_done


def config_conflicts(folder: str, options: argparse.Namespace) -> List[str]:
    """Options that differ between the folder's config.json and the row (volatile ones aside)."""
    if not os.path.isfile(os.path.join(folder, rf.CONFIG_FILE)):
        return []
    saved = rf.read_config(folder)
    differences = []
    for key, value in sorted(vars(options).items()):
        if key in VOLATILE_OPTIONS or key not in saved:
            continue
        if saved[key] != value and not (isinstance(value, tuple) and list(value) == saved[key]):
            differences.append(f"--{key} {saved[key]!r} there, {value!r} here")
    return differences


def row_status(folder: str, options: argparse.Namespace) -> Tuple[str, str]:
    """``(status, detail)``: new, finished, resume, restart or conflict."""
    if not os.path.exists(folder):
        return "new", ""
    conflicts = config_conflicts(folder, options)
    if conflicts:
        more = f"; and {len(conflicts) - 4} more" if len(conflicts) > 4 else ""
        return "conflict", "; ".join(conflicts[:4]) + more
    done = last_epoch(folder)
    if done >= options.n_epochs:
        return "finished", f"epoch {done} of {options.n_epochs}"
    if os.path.isfile(os.path.join(folder, rf.LAST_CHECKPOINT)):
        return "resume", f"from epoch {done} of {options.n_epochs}"
    return "restart", "no checkpoint to continue from"


def main_argv(row: Row, save_path: str) -> List[str]:
    folder = os.path.join(save_path, row.name)
    if row.status == "resume":
        return row.args + row.extra + ["--resume", folder]
    return row.args + row.extra + ["--save_path", save_path, "--savename", row.name]


# ----------------------------------------------------------------------------- running
def run_subprocess(argv: List[str]) -> int:
    return subprocess.call([sys.executable, MAIN_SCRIPT] + argv)


def run_in_process(argv: List[str]) -> int:
    """``main.run(argv)`` in this process: no interpreter start and torch import per row."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return training.run(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # one broken row must not hide the others' results
        traceback.print_exc()
        return 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def prepare(rows: Sequence[Row], save_path: str, script: str) -> None:
    for row in rows:
        row.options = parse_row_options(row)
        if row.options.dataset != row.dataset:
            raise SweepError(f"row {row.name} trains --dataset {row.options.dataset}; its name "
                             f"says {row.dataset}")
    check_data_roots(rows, script)
    for row in rows:
        row.status, row.outcome = row_status(os.path.join(save_path, row.name), row.options)


def sweep(rows: Sequence[Row], save_path: str, dry_run: bool, in_process: bool) -> int:
    """Run the prepared rows; returns the exit status (0: every row finished)."""
    verbs = {"new": "train", "finished": "skip (finished)", "resume": "continue",
             "restart": "train afresh (stale folder moved aside)", "conflict": "refuse"}
    if dry_run:
        for row in rows:
            detail = f": {row.outcome}" if row.outcome else ""
            print(f"# {row.name}: {verbs[row.status]}{detail}")
            if row.status not in ("finished", "conflict"):
                print(shlex.join(["python", "main.py"] + main_argv(row, save_path)))
        return 0
    runner = run_in_process if in_process else run_subprocess
    results = []
    started = time.time()
    for index, row in enumerate(rows, start=1):
        folder = os.path.join(save_path, row.name)
        prefix = f"==> [{index}/{len(rows)}] {row.name}"
        if row.status in ("finished", "conflict"):
            print(f"{prefix}: {verbs[row.status]}: {row.outcome}", flush=True)
            results.append((row.name, "finished (skipped)" if row.status == "finished" else
                            f"REFUSED: {folder} was made with other settings: {row.outcome}; "
                            f"move it away to rerun this row"))
            continue
        if row.status == "restart":
            aside = f"{folder}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(folder, aside)
            print(f"{prefix}: {folder} never finished an epoch; moved to {aside}", flush=True)
        argv = main_argv(row, save_path)
        print(f"{prefix}: python main.py {shlex.join(argv)}", flush=True)
        row_started = time.time()
        code = runner(argv)
        done = last_epoch(folder)
        seconds = time.time() - row_started
        if code == 0 and done >= row.options.n_epochs:
            how = "continued" if row.status == "resume" else "trained"
            results.append((row.name, f"finished ({how}, {seconds:.0f} s)"))
        else:
            results.append((row.name, f"FAILED (exit {code}, epoch {done} of "
                                      f"{row.options.n_epochs})"))
        if code == 130:  # Ctrl-C: main.py saved a checkpoint; stop the sweep too
            print("stopped; rerun the same command to continue", flush=True)
            break
    width = max((len(name) for name, _ in results), default=0)
    print(f"\nsweep summary ({time.time() - started:.0f} s), run folders under {save_path}:")
    for name, outcome in results:
        print(f"  {name:<{width}}  {outcome}")
    missing = len(rows) - len(results)
    ok = missing == 0 and all(outcome.startswith("finished") for _, outcome in results)
    print("all selected rows finished" if ok else
          f"{sum(not o.startswith('finished') for _, o in results) + missing} row(s) not finished")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="-", help="Row list file; '-' reads standard input.")
    parser.add_argument("--save_path", required=True,
                        help="Parent folder of the rows' run folders.")
    parser.add_argument("--select", nargs="*", default=[], help="Row words (see select_rows).")
    parser.add_argument("--script", default="the table script", help="Name used in messages.")
    parser.add_argument("--dry_run", action="store_true", help="Print what would run; run nothing.")
    parser.add_argument("--smoke", action="store_true", help="One-epoch CPU runs on tiny data.")
    parser.add_argument("--smoke_backbone", default=SMOKE_BACKBONE)
    parser.add_argument("--in_process", action="store_true",
                        help="Run rows inside this process (default with --smoke).")
    args = parser.parse_args(argv)
    try:
        if args.rows == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.rows) as handle:
                lines = handle.read().splitlines()
        rows = select_rows(read_rows(lines), args.select, args.script)
        if not rows:
            raise SweepError(f"{args.script}: the words {' '.join(args.select)} select no row")
        for row in rows:
            if args.smoke:
                row.args = smoke_args(row.args, args.smoke_backbone)
            row.extra = list(extra)
        prepare(rows, args.save_path, args.script)
    except (SweepError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.smoke and not args.dry_run:
        # Tiny tensors on a shared CPU: one thread avoids oversubscription (4x faster here).
        torch.set_num_threads(1)
    return sweep(rows, args.save_path, args.dry_run, args.in_process or args.smoke)


if __name__ == "__main__":
    sys.exit(main())
