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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import architectures
import datasets
from parameters import parse_options
from tools import _launch as launch
from tools._launch import VOLATILE_OPTIONS, last_epoch, row_status  # noqa: F401 (used by tests)
from utilities.options import at_least
from utilities.errors import UserError
from utilities.registry import UnknownNameError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_SCRIPT = os.path.join(REPO_ROOT, "main.py")

# What a dataset folder under DATA_ROOT must hold (checked before anything runs) and the short
# words that select a dataset's rows are the dataset's own (`folders`, `aliases` in datasets/).
VARIANT_ALIASES = {"base": "baseline"}

# SMOKE=1: one epoch on tiny generated data, on CPU, small and quick. The backbone is swapped
# (its option words frozen/normalize/double are kept) and the batch made to fit 8 classes; every
# other option of the row (loss, miner, DAS settings, embedding size, ...) stays as in the paper.
SMOKE_OPTIONS = ["--n_epochs", "1", "--not_pretrained", "--kernels", "0", "--crop_size", "32",
                 "--bs", "16", "--eval_bs", "64", "--device", "cpu"]
SMOKE_BACKBONE = "tinycnn"

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
def dataset_aliases(names: Sequence[str]) -> List[str]:
    """The short words of the named datasets (cub, cars, sop), in the names' order."""
    records = [datasets.REGISTRY.find(name) for name in names]
    return [alias for record in records if record for alias in record.aliases]


def _word_matches(word: str, position: int, tag: str) -> bool:
    if position == 0:
        record = datasets.REGISTRY.find(tag)
        return word == tag or (record is not None and word in record.aliases)
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
            aliases = ", ".join(dataset_aliases(kinds[0]))
            raise SweepError(
                f"{script}: unknown row word '{word}'. Choose rows by dataset "
                f"({' '.join(kinds[0])}{'; or ' + aliases if aliases else ''}), by "
                f"backbone/method "
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
        record = datasets.REGISTRY.find(dataset)
        expected = record.folders if record else ()
        missing = [part for part in expected if not os.path.isdir(os.path.join(folder, part))]
        if not os.path.isdir(folder):
            problems[(source, dataset)] = f"'{folder}' does not exist"
        elif missing:
            lacking = ", ".join(m + "/" for m in missing)
            problems[(source, dataset)] = (f"'{folder}' lacks {lacking} (expected "
                                           f"{dataset}/{' and '.join(expected)})")
    if problems:
        sources = sorted({str(s) for s, _ in problems})
        present = sorted(d.name for d in datasets.described() if d.folders and sources
                         and os.path.isdir(os.path.join(sources[0], d.name)))
        hint = (f"; it holds {', '.join(present)}: choose those rows, e.g. "
                f"'bash {script} DATA_ROOT {present[0]}'" if present else
                "; DATA_ROOT must be the folder that holds cub200/, cars196/, online_products/")
        raise SweepError(f"{script}: DATA_ROOT {', '.join(repr(s) for s in sources)} does not fit "
                         f"the selected rows: " + "; ".join(problems.values()) + hint)


def row_spec(row: Row, save_path: str) -> launch.RowSpec:
    return launch.RowSpec(row.name, row.args + row.extra, row.options, save_path)


def main_argv(row: Row, save_path: str) -> List[str]:
    return launch.main_argv(row_spec(row, save_path), row.status)


# ----------------------------------------------------------------------------- running
def run_subprocess(argv: List[str]) -> int:
    return subprocess.call([sys.executable, MAIN_SCRIPT] + argv)


run_in_process = launch.run_in_process


def prepare(rows: Sequence[Row], save_path: str, script: str) -> None:
    for row in rows:
        row.options = parse_row_options(row)
        if row.options.dataset != row.dataset:
            raise SweepError(f"row {row.name} trains --dataset {row.options.dataset}; its name "
                             f"says {row.dataset}")
    check_data_roots(rows, script)
    for row in rows:
        row.status, row.outcome = row_status(os.path.join(save_path, row.name), row.options)


# ----------------------------------------------------------------------------- estimates
def epoch_size(options: argparse.Namespace, cache: Dict) -> str:
    """``52 steps x 112 = 5824 of 5864 training images per epoch`` for --dry-run, from the
    dataset's file lists and the row's sampler (no image is opened)."""
    import datasampler

    key = (options.dataset, options.source, options.use_tv_split, options.tv_split_perc,
           options.data_split, options.data_split_id, options.folder_name)
    try:
        if key not in cache:
            cache[key] = datasets.load(
                options.dataset, options.source, use_tv_split=options.use_tv_split,
                tv_split_perc=options.tv_split_perc,
                tv_split_by_samples=options.tv_split_by_samples, seed=options.seed,
                folder_name=options.folder_name, data_split=options.data_split,
                data_split_path=options.data_split_path, data_split_id=options.data_split_id)
        train = cache[key].train
        sampler = datasampler.from_options(options.data_sampler, options, train.labels,
                                           class_names=train.class_names,
                                           super_labels=train.super_labels)
        steps = len(sampler)
    except Exception as error:  # an estimate only: the row itself reports bad data when it runs
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"steps per epoch unknown ({reason[:160]})"
    return (f"{steps} steps x {options.bs} = {steps * options.bs} of {len(train)} training "
            f"images per epoch; {options.n_epochs} epochs = {steps * options.n_epochs} steps")


# ----------------------------------------------------------------------------- running
VERBS = {"new": "train", "finished": "skip (finished)", "resume": "continue",
         "restart": "train afresh (stale folder moved aside)", "conflict": "refuse"}


def dry_run(rows: Sequence[Row], save_path: str) -> int:
    cache: Dict = {}
    for row in rows:
        detail = f": {row.outcome}" if row.outcome else ""
        print(f"# {row.name}: {VERBS[row.status]}{detail}")
        if row.status not in ("finished", "conflict"):
            print(f"#   {epoch_size(row.options, cache)}")
            print(shlex.join(["python", "main.py"] + main_argv(row, save_path)))
    return 0


def summary(results: Sequence[Tuple[str, str]], selected: int, save_path: str,
            seconds: float) -> int:
    """Print the final table; exit status 0 only when every selected row has finished."""
    width = max((len(name) for name, _ in results), default=0)
    print(f"\nsweep summary ({seconds:.0f} s), run folders under {save_path}:")
    for name, outcome in results:
        print(f"  {name:<{width}}  {outcome}")
    not_finished = [name for name, outcome in results if not outcome.startswith("finished")]
    missing = selected - len(results)
    ok = missing == 0 and not not_finished
    print("all selected rows finished" if ok else
          f"{len(not_finished) + missing} row(s) not finished"
          f"{': ' + ', '.join(not_finished) if not_finished else ''}")
    return 0 if ok else 1


def sweep(rows: Sequence[Row], save_path: str, in_process: bool) -> int:
    """Run the prepared rows one after the other, output on the terminal; returns the exit
    status (0: every row finished)."""
    results = []
    started = time.time()
    for index, row in enumerate(rows, start=1):
        prefix = f"==> [{index}/{len(rows)}] {row.name}"

        def announce(argv: List[str], status: str, moved: str) -> None:
            if moved:
                print(f"{prefix}: {moved}", flush=True)
            print(f"{prefix}: python main.py {shlex.join(argv)}", flush=True)

        def runner(argv: List[str], log, tick) -> int:
            return run_in_process(argv) if in_process else run_subprocess(argv)

        outcome = launch.execute_row(row_spec(row, save_path), runner, announce=announce,
                                     log=False)
        if outcome.state in ("skipped", "refused", "elsewhere"):
            print(f"{prefix}: {'skip' if outcome.state == 'skipped' else outcome.text}",
                  flush=True)
        results.append((row.name, outcome.text))
        if outcome.code == 130:  # Ctrl-C: main.py saved a checkpoint; stop the sweep too
            print("stopped; rerun the same command to continue", flush=True)
            break
    return summary(results, len(rows), save_path, time.time() - started)


def run_parallel(rows: Sequence[Row], save_path: str, args: argparse.Namespace) -> int:
    """--jobs N / --gpus: rows at once, one status table; see tools/_launch.py."""
    cpu_rows = all(str(row.options.device) == "cpu" for row in rows)
    gpu_ids = launch.visible_gpus(args.gpus, cpu_rows)
    slots = launch.plan_slots(args.jobs, gpu_ids, args.per_gpu, args.gpus_per_row,
                              args.threads_per_row, sorted(os.sched_getaffinity(0)))
    specs = [row_spec(row, save_path) for row in rows]
    print(f"{len(specs)} rows, {len(slots)} at once: " +
          "; ".join(slot.describe() for slot in slots) + f"; logs: <run folder>/{launch.LOG_FILE}",
          flush=True)
    started = time.time()
    outcomes = launch.run_local(specs, slots, args.gpus_per_row)
    return summary([(spec.name, outcome.text) for spec, outcome in zip(specs, outcomes)],
                   len(specs), save_path, time.time() - started)


def run_slurm(rows: Sequence[Row], save_path: str, args: argparse.Namespace,
              script: str) -> int:
    specs = [row_spec(row, save_path) for row in rows]
    # rows on the CPU (SMOKE, --device cpu) ask for no GPU
    args.job_gpus = 0 if all(str(row.options.device) == "cpu" for row in rows) else \
        args.gpus_per_row
    results, jobs = launch.submit(specs, save_path, args, cluster=args.slurm_cluster)
    width = max(len(name) for name, _ in results)
    for name, text in results:
        print(f"  {name:<{width}}  {text}")
    print(f"{len(jobs)} row(s) submitted"
          f"{f' (at most {args.slurm_parallel} at once)' if jobs and args.slurm_parallel else ''}"
          f"; follow them with: bash {script} ... --status")
    return 0


def show_status(rows: Sequence[Row], save_path: str) -> int:
    lines = launch.status_lines([row_spec(row, save_path) for row in rows])
    width = max(len(name) for name, _, _ in lines)
    print(f"rows under {save_path}:")
    for name, text, _ in lines:
        print(f"  {name:<{width}}  {text}")
    done = sum(finished for _, _, finished in lines)
    print(f"{done} of {len(lines)} rows finished")
    return 0


def launcher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rows at once on this machine")
    group.add_argument("--jobs", type=at_least(1), default=None,
                       help="Rows trained at once (default 1; with GPUs: one per GPU slot).")
    group.add_argument("--gpus", default=None,
                       help="GPU ids to use, e.g. 0,1,2,3 (default: CUDA_VISIBLE_DEVICES, or all).")
    group.add_argument("--per_gpu", type=at_least(1), default=1, help="Rows sharing one GPU.")
    group.add_argument("--gpus_per_row", type=at_least(1), default=1,
                       help="GPUs of one row, trained with torchrun (e.g. 4 for the SOP rows).")
    group.add_argument("--threads_per_row", type=at_least(1), default=None,
                       help="torch threads of a row on CPU (default: its share of the cores).")
    group = parser.add_argument_group("rows as SLURM jobs (submitit)")
    group.add_argument("--slurm", action="store_true",
                       help="Submit the rows (not finished, queued or running) as a job array.")
    group.add_argument("--slurm_cluster", choices=("slurm", "local"), default="slurm",
                       help="local: submitit's LocalExecutor, each row a job on this machine.")
    group.add_argument("--slurm_partition", default=None)
    group.add_argument("--slurm_time", type=at_least(1), default=24 * 60,
                       help="Time limit of a job in minutes; a row that needs longer is requeued "
                            "and continues (default 1440).")
    group.add_argument("--cpus_per_row", type=at_least(1), default=8,
                       help="CPUs of a job (its torch threads and data loader workers).")
    group.add_argument("--mem_gb", type=at_least(1), default=None, help="Memory of a job.")
    group.add_argument("--slurm_parallel", type=at_least(1), default=None,
                       help="At most this many rows running at once (the array's %%N).")
    group.add_argument("--slurm_signal_delay", type=at_least(1), default=120,
                       help="Seconds before the time limit at which a job saves and requeues.")
    group.add_argument("--slurm_max_timeouts", type=at_least(0), default=30,
                       help="Requeues at the time limit before a row is given up.")
    group.add_argument("--slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                       help="One more sbatch option (repeatable), e.g. account=lab, qos=high.")
    group.add_argument("--slurm_name", default="das_table")
    parser.add_argument("--status", action="store_true",
                        help="Show the rows' status from their run folders and SLURM; run nothing.")


def check_launcher_arguments(args: argparse.Namespace) -> None:
    if args.slurm and (args.jobs or args.gpus):
        raise SweepError("--slurm runs each row as its own job; --jobs and --gpus are for "
                         "running rows at once on this machine")
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--slurm_extra expects KEY=VALUE sbatch options, got '{item}'")
        extra[key.lstrip("-").replace("-", "_")] = value
    args.slurm_extra = extra


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
    launcher_arguments(parser)
    args = parser.parse_args(argv)
    try:
        check_launcher_arguments(args)
        if args.rows == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                with open(args.rows, encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
            except UnicodeDecodeError:
                raise SweepError(f"rows file '{args.rows}' is not UTF-8 text; expected one row "
                                 f"per line: NAME followed by main.py options") from None
        rows = select_rows(read_rows(lines), args.select, args.script)
        if not rows:
            raise SweepError(f"{args.script}: the words {' '.join(args.select)} select no row")
        for row in rows:
            if args.smoke:
                row.args = smoke_args(row.args, args.smoke_backbone)
            row.extra = list(extra)
        prepare(rows, args.save_path, args.script)
        if args.dry_run:
            return dry_run(rows, args.save_path)
        if args.status:
            return show_status(rows, args.save_path)
        if args.slurm:
            return run_slurm(rows, args.save_path, args, args.script)
        if (args.jobs or 1) > 1 or args.gpus or args.gpus_per_row > 1 or args.per_gpu > 1:
            return run_parallel(rows, args.save_path, args)
    except (SweepError, launch.LaunchError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.smoke:
        # Tiny tensors on a shared CPU: one thread avoids oversubscription (4x faster here).
        torch.set_num_threads(args.threads_per_row or 1)
    elif args.threads_per_row:
        torch.set_num_threads(args.threads_per_row)
        os.environ["OMP_NUM_THREADS"] = str(args.threads_per_row)
    return sweep(rows, args.save_path, args.in_process or args.smoke)


if __name__ == "__main__":
    sys.exit(main())
