"""Running a table's rows: one at a time, several at once on this machine, or as SLURM jobs.

``tools/sweep.py`` reads and selects the rows; this module runs them and reports on them.

* **One row** (:func:`execute_row`): take the row's lock (``SAVE_PATH/.sweep/locks/<row>.lock``),
  refuse if another launcher or a ``main.py`` already trains the row (its run folder's ``.lock``):
  "running elsewhere"; decide again from the run folder whether to train, continue or skip (a
  requeued SLURM job continues where its preempted run stopped), run ``main.py``, and record
  the outcome in ``SAVE_PATH/.sweep/state/<row>.json`` (state, exit status, last error line,
  start and end times) for ``--status``.
* **Several rows at once** (:func:`run_local`): a ``concurrent.futures`` thread pool, one thread
  per slot; a slot is a GPU (or ``--gpus_per_row`` GPUs, trained with torchrun), shared by
  ``--per_gpu`` rows, or on CPU an equal share of the cores (CPU affinity and torch threads).
  Each row is its own process, forked from a server that imported ``main`` once (multiprocessing
  ``forkserver``: no interpreter start-up and torch import per row); torchrun rows are
  subprocesses. A row's output goes to ``train.log`` in its run folder; the terminal shows one
  status table.
* **SLURM** (:func:`submit`): each row is a ``submitit`` job (a job array with at most
  ``--slurm_parallel`` running). At its time limit or on preemption SLURM signals the job,
  submitit calls :meth:`RowJob.checkpoint`, which has ``main.py`` save ``checkpoint_last.pth``
  mid-epoch (SIGTERM, its own stop-and-save) and requeues the job; the requeued job continues
  with ``--resume``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import multiprocessing
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from parameters import bookkeeping_keys
from utilities import run_folder as rf
from utilities.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_SCRIPT = os.path.join(REPO_ROOT, "main.py")
SWEEP_DIR = ".sweep"  # under SAVE_PATH: locks/, state/, logs/ (before a run folder exists), jobs
LOG_FILE = "train.log"
JOBS_FILE = "slurm_jobs.json"
STOP_WAIT_S = 600  # how long a preempted job waits for main.py to save its checkpoint

# What may differ between a run folder and its row without making it another experiment: the
# entries that do not change it (parameters.bookkeeping_keys), --n_epochs (a row with more epochs
# continues the run) and the training-data record, which a row's options do not hold.
VOLATILE_OPTIONS = bookkeeping_keys() | {"n_epochs"} | set(rf.TRAINING_DATA_KEYS)


class LaunchError(UserError, ValueError):
    """Bad launcher input (--jobs, --gpus, SLURM settings); the message says what to fix."""


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


@dataclasses.dataclass
class RowSpec:
    """What a worker or a SLURM job needs to run one row (picklable, no torch inside)."""

    name: str
    argv: List[str]  # main.py options of the row, with the extra ones (no save/resume options)
    options: argparse.Namespace
    save_path: str

    @property
    def folder(self) -> str:
        return os.path.join(self.save_path, self.name)

    @property
    def n_epochs(self) -> int:
        return int(self.options.n_epochs)


def main_argv(spec: RowSpec, status: str) -> List[str]:
    """main.py's argument list for the row in its current status (continue or start)."""
    if status == "resume":
        return spec.argv + ["--resume", spec.folder]
    return spec.argv + ["--save_path", spec.save_path, "--savename", spec.name]


def sweep_path(save_path: str, *parts: str) -> str:
    path = os.path.join(save_path, SWEEP_DIR, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


# ----------------------------------------------------------------------------- state and locks
def write_state(spec: RowSpec, **fields) -> None:
    """Record the row's latest state for --status (written whole, then renamed into place)."""
    path = sweep_path(spec.save_path, "state", f"{spec.name}.json")
    fields.setdefault("host", socket.gethostname())
    fields.setdefault("time", time.time())
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump(fields, handle)
    os.replace(temporary, path)


def read_state(save_path: str, name: str) -> Dict:
    try:
        with open(os.path.join(save_path, SWEEP_DIR, "state", f"{name}.json")) as handle:
            state = json.load(handle)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _try_flock(path: str, create: bool) -> Tuple[Optional[int], str]:
    """``(descriptor holding the lock, "")`` or ``(None, what the holder wrote)``."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        descriptor = os.open(path, flags, 0o644)
    except FileNotFoundError:
        return -1, ""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(descriptor, 200).decode(errors="replace").strip()
        os.close(descriptor)
        return None, holder or "unknown process"
    return descriptor, ""


class RowLock:
    """The row's launcher lock (flock on ``.sweep/locks/<row>.lock``), held by whoever trains the
    row: a launcher's worker or a SLURM job. It covers the moment before main.py has created and
    locked the run folder, when two launchers could otherwise both start the row."""

    def __init__(self, save_path: str, name: str) -> None:
        self.path = sweep_path(save_path, "locks", f"{name}.lock")
        self.descriptor: Optional[int] = None

    def acquire(self, holder: str) -> Optional[str]:
        """None when taken, else who holds it."""
        descriptor, other = _try_flock(self.path, create=True)
        if descriptor is None:
            return other
        os.ftruncate(descriptor, 0)
        os.write(descriptor, holder.encode())
        self.descriptor = descriptor
        return None

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None


def held_elsewhere(spec: RowSpec) -> Optional[str]:
    """Who trains the row now, if anyone: a launcher or job (row lock) or a main.py (run-folder
    lock, e.g. a ``main.py --resume`` started by hand). Checked without keeping either lock."""
    descriptor, holder = _try_flock(sweep_path(spec.save_path, "locks", f"{spec.name}.lock"),
                                    create=True)
    if descriptor is None:
        return holder
    os.close(descriptor)
    return held_elsewhere_folder(spec.folder)


def held_elsewhere_folder(folder: str) -> Optional[str]:
    """The pid holding the run folder's lock (main.py trains there), or None."""
    if not os.path.isdir(folder):
        return None
    descriptor, holder = _try_flock(os.path.join(folder, rf.LOCK_FILE), create=False)
    if descriptor is None:
        return f"main.py pid {holder}"
    if descriptor >= 0:
        os.close(descriptor)
    return None


def holder_text(job: str = "") -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}{f', SLURM job {job}' if job else ''}"


# ----------------------------------------------------------------------------- logs, progress
class RowLog:
    """The row's log file. main.py creates the run folder, so a new row logs to
    ``.sweep/logs/<row>.log`` first; once the folder exists the file is hard-linked into it as
    ``train.log`` (the same file: later output shows in both) and the first name removed at
    the end. A continued row appends to its ``train.log``."""

    def __init__(self, spec: RowSpec) -> None:
        self.folder = spec.folder
        if os.path.isdir(spec.folder):
            self.path, self.pending = os.path.join(spec.folder, LOG_FILE), None
        else:
            self.path = sweep_path(spec.save_path, "logs", f"{spec.name}.log")
            self.pending = self.path
            open(self.path, "w").close()
        self.first = self.pending  # the first name, removed once linked

    def header(self, argv: List[str]) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} {holder_text()}: "
                         f"{shlex.join(['python', 'main.py'] + argv)}\n")

    def link(self) -> None:
        """Hard-link the pending log into the run folder once main.py has written config.json."""
        if self.pending is None or not os.path.isfile(os.path.join(self.folder, rf.CONFIG_FILE)):
            return
        target = os.path.join(self.folder, LOG_FILE)
        try:
            os.link(self.pending, target)
        except OSError:  # another file system: copy at the end instead
            return
        self.path, self.pending = target, None

    def close(self) -> None:
        self.link()
        if self.first is not None and self.pending is None:
            os.unlink(self.first)
        elif self.pending is not None and os.path.isdir(self.folder):
            shutil.copyfile(self.pending, os.path.join(self.folder, LOG_FILE))


def tail(path: str, size: int = 8192) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - size, 0))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def last_error_line(path: str) -> str:
    """The log's last ``error:`` line, else its last non-empty line (a traceback's last)."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", tail(path)) if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


_TQDM = re.compile(r"epoch (\d+):\s+\d+%\|[^\r\n]*?\|\s*(\d+)/(\d+)")


def progress_text(spec: RowSpec, log_path: str) -> str:
    """``epoch 3/300 step 20/52, R@1 0.612 after epoch 2`` from the log's progress bar and
    metrics.csv."""
    parts = []
    bars = _TQDM.findall(tail(log_path))
    rows = rf.read_metrics_lenient(spec.folder) if os.path.isfile(
        os.path.join(spec.folder, rf.METRICS_FILE)) else []
    finished = int(rows[-1].get("epoch") or 0) if rows else 0
    if bars and int(bars[-1][0]) > finished:
        epoch, step, steps = bars[-1]
        parts.append(f"epoch {epoch}/{spec.n_epochs} step {step}/{steps}")
    if rows:
        last = rows[-1]
        recall = next((v for k, v in last.items() if k.endswith("/recall@1") and v is not None
                       and not k.startswith("train/")), None)
        done = f"epoch {int(last['epoch'])}" if last.get("epoch") is not None else "last epoch"
        if not parts:
            parts.append(f"{done} of {spec.n_epochs} done")
        if recall is not None:
            parts.append(f"R@1 {recall:.3f} after {done}")
    return ", ".join(parts) or "starting"


# ----------------------------------------------------------------------------- one row
@dataclasses.dataclass
class Outcome:
    state: str  # finished, skipped, failed, stopped, elsewhere, refused
    text: str
    code: Optional[int] = None
    started: Optional[float] = None
    ended: Optional[float] = None

    @property
    def finished(self) -> bool:
        return self.state in ("finished", "skipped")


# A runner runs main.py with the given arguments, writing to the log when there is one, and
# returns its exit status; it calls ``tick`` about every second while the row runs.
Runner = Callable[[List[str], Optional[RowLog], Callable[[], None]], int]


def execute_row(spec: RowSpec, runner: Runner, job: str = "",
                announce: Optional[Callable[[List[str], str, str], None]] = None,
                log: bool = True) -> Outcome:
    """Lock, decide (train, continue, skip, refuse), run and record one row."""
    lock = RowLock(spec.save_path, spec.name)
    holder = lock.acquire(holder_text(job))
    if holder is not None:
        return Outcome("elsewhere", f"running elsewhere ({holder})")
    row_log = None
    try:
        busy = held_elsewhere_folder(spec.folder)
        if busy:
            return Outcome("elsewhere", f"running elsewhere ({busy})")
        status, detail = row_status(spec.folder, spec.options)
        if status == "finished":
            return Outcome("skipped", "finished (skipped)")
        if status == "conflict":
            return Outcome("refused", f"REFUSED: {spec.folder} was made with other settings: "
                                      f"{detail}; move it away to rerun this row")
        moved = ""
        if status == "restart":
            aside = f"{spec.folder}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(spec.folder, aside)
            moved = f"{spec.folder} never finished an epoch; moved to {aside}"
        argv = main_argv(spec, status)
        if announce is not None:
            announce(argv, status, moved)
        row_log = RowLog(spec) if log else None
        if row_log is not None:
            row_log.header(argv)
        started = time.time()
        write_state(spec, state="running", pid=os.getpid(), job=job, started=started,
                    log=row_log.path if row_log else "")

        def tick() -> None:
            if row_log is not None:
                row_log.link()

        code = runner(argv, row_log, tick)
        ended = time.time()
        if row_log is not None:
            row_log.close()
        done = last_epoch(spec.folder)
        seconds = f"{ended - started:.0f} s"
        if code == 0 and done >= spec.n_epochs:
            how = "continued" if status == "resume" else "trained"
            outcome = Outcome("finished", f"finished ({how}, {seconds})", code, started, ended)
        else:
            error = last_error_line(row_log.path) if row_log is not None else ""
            state = "stopped" if code == 130 else "failed"
            outcome = Outcome(state, f"{state.upper()} (exit {code}, epoch {done} of "
                                     f"{spec.n_epochs}){f': {error}' if error else ''}",
                              code, started, ended)
        write_state(spec, state=outcome.state, text=outcome.text, code=code, job=job,
                    started=started, ended=ended, log=row_log.path if row_log else "")
        return outcome
    finally:
        lock.release()


# ----------------------------------------------------------------------------- runners
def run_in_process(argv: List[str]) -> int:
    """``main.run(argv)`` in this process: no interpreter start and torch import per row."""
    import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main.run(argv)
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


def _wait(wait: Callable[[float], Optional[int]], tick: Callable[[], None]) -> int:
    """``wait(0.5)`` (the exit status, or None after half a second) until the row ends."""
    while True:
        code = wait(0.5)
        if code is not None:
            return code
        tick()


def _popen_wait(child: subprocess.Popen) -> Callable[[float], Optional[int]]:
    def wait(timeout: float) -> Optional[int]:
        try:
            # with a timeout, Popen.wait does not hold its lock while it sleeps
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    return wait


def _child_exited(child: subprocess.Popen) -> bool:
    """From a signal handler: whether the child has ended (os.waitpid, not Popen.poll, whose
    lock the interrupted main thread may hold)."""
    if child.returncode is not None:
        return True
    try:
        pid, _ = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:  # reaped by the main thread already
        return True
    return pid != 0


def _child_setup(cores: Sequence[int]) -> Callable[[], None]:
    def setup() -> None:
        # SLURM may signal every process of the job; only the job (submitit) answers USR2, and
        # it asks main.py to save with SIGTERM.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        if cores:
            os.sched_setaffinity(0, cores)
    return setup


def child_env(gpus: Optional[str], threads: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ)
    paths = [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def main_command(argv: List[str], processes: int) -> List[str]:
    if processes > 1:  # one row over several GPUs
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(processes), MAIN_SCRIPT] + argv
    return [sys.executable, MAIN_SCRIPT] + argv


def popen_runner(gpus: Optional[str] = None, cores: Sequence[int] = (),
                 threads: Optional[int] = None, processes: int = 1,
                 on_child: Optional[Callable[[Optional[subprocess.Popen]], None]] = None) -> Runner:
    """main.py (or torchrun over ``processes`` GPUs) as a subprocess writing to the row log."""

    def run(argv: List[str], log: Optional[RowLog], tick: Callable[[], None]) -> int:
        output = open(log.path, "ab") if log is not None else None
        try:
            child = subprocess.Popen(main_command(argv, processes), stdout=output,
                                     stderr=subprocess.STDOUT if output else None,
                                     env=child_env(gpus, threads),
                                     preexec_fn=_child_setup(cores))
        finally:
            if output is not None:
                output.close()
        if on_child is not None:
            on_child(child)
        try:
            return _wait(_popen_wait(child), tick)
        finally:
            if on_child is not None:
                on_child(None)
    return run


def _forked_row(argv: List[str], log_path: str, gpus: Optional[str], cores: Sequence[int],
                threads: int) -> None:
    """Body of a forked row process: output to the log, its GPU, cores and threads, main.run."""
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # before CUDA starts in this process
    if cores:
        os.sched_setaffinity(0, cores)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    code = run_in_process(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


_FORK_CONTEXT: Optional[multiprocessing.context.BaseContext] = None


def fork_context() -> multiprocessing.context.BaseContext:
    """A forkserver that has imported main.py once; each row is a fresh fork of it."""
    global _FORK_CONTEXT
    if _FORK_CONTEXT is None:
        paths = [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # for the server
        _FORK_CONTEXT = multiprocessing.get_context("forkserver")
        _FORK_CONTEXT.set_forkserver_preload(["main", "tools._launch"])
    return _FORK_CONTEXT


def fork_runner(gpus: Optional[str], cores: Sequence[int], threads: int) -> Runner:
    def run(argv: List[str], log: Optional[RowLog], tick: Callable[[], None]) -> int:
        process = fork_context().Process(target=_forked_row,
                                         args=(argv, log.path, gpus, tuple(cores), threads))
        process.start()

        def wait(timeout: float) -> Optional[int]:
            process.join(timeout)
            return process.exitcode

        code = _wait(wait, tick)
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
    return run


# ----------------------------------------------------------------------------- slots
@dataclasses.dataclass
class Slot:
    gpus: Optional[str]  # CUDA_VISIBLE_DEVICES of a row in this slot; None on CPU
    cores: Tuple[int, ...]
    threads: int

    def describe(self) -> str:
        where = f"GPU {self.gpus}" if self.gpus is not None else "CPU"
        return f"{where}, cores {','.join(map(str, self.cores))}, {self.threads} threads"


def visible_gpus(gpus: Optional[str], cpu_rows: bool) -> List[str]:
    """GPU ids the rows may use: --gpus, else CUDA_VISIBLE_DEVICES, else every card torch sees;
    none for rows that train on the CPU."""
    if cpu_rows:
        if gpus:
            raise LaunchError(f"--gpus {gpus} given, but the rows train on the CPU "
                              f"(--device cpu); drop one of them")
        return []
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids:
            raise LaunchError(f"--gpus expects a comma-separated list of GPU ids, got '{gpus}'")
        return ids
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(jobs: Optional[int], gpu_ids: List[str], per_gpu: int, gpus_per_row: int,
               threads_per_row: Optional[int], cores: Sequence[int]) -> List[Slot]:
    """The places rows run in at once. With GPUs: groups of ``gpus_per_row`` cards, each taken by
    ``per_gpu`` rows (``jobs`` defaults to all those slots); on CPU: ``jobs`` slots sharing the
    cores equally (``threads_per_row`` overrides the torch threads of a row)."""
    cores = sorted(cores)
    if gpu_ids:
        if gpus_per_row > len(gpu_ids):
            raise LaunchError(f"--gpus_per_row {gpus_per_row} needs that many GPUs; "
                              f"{len(gpu_ids)} visible ({','.join(gpu_ids)})")
        groups = [gpu_ids[i:i + gpus_per_row]
                  for i in range(0, len(gpu_ids) - gpus_per_row + 1, gpus_per_row)]
        places = [",".join(group) for group in groups for _ in range(per_gpu)]
        if jobs is not None and jobs > len(places):
            raise LaunchError(f"--jobs {jobs} exceeds the {len(places)} GPU slots ({len(gpu_ids)} "
                              f"GPUs, {gpus_per_row} per row, --per_gpu {per_gpu}); raise "
                              f"--per_gpu to put more rows on one GPU")
        # interleave, so that --jobs 2 on 4 GPUs takes two different cards
        order = [",".join(group) for _ in range(per_gpu) for group in groups]
        places = order[:jobs or len(order)]
    else:
        if gpus_per_row > 1:
            raise LaunchError(f"--gpus_per_row {gpus_per_row} needs GPUs; none visible")
        places = [None] * (jobs or 1)
    share = max(len(cores) // len(places), 1)
    slots = []
    for index, gpus in enumerate(places):
        mine = tuple(cores[index * share:(index + 1) * share]) or (cores[index % len(cores)],)
        slots.append(Slot(gpus, mine, threads_per_row or len(mine)))
    return slots


# ----------------------------------------------------------------------------- status table
class StatusBoard:
    """One table of the rows (queued, running with epoch and R@1, finished, failed with its
    error line). On a terminal it is redrawn in place (a few ANSI codes: no table library among
    the dependencies); otherwise each change prints one line."""

    def __init__(self, specs: Sequence[RowSpec], stream=None, live: Optional[bool] = None) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.states: Dict[str, Tuple[str, str]] = {s.name: ("queued", "") for s in specs}
        self.logs: Dict[str, str] = {}
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.printed: Dict[str, str] = {}
        self.drawn = 0
        self.lock = threading.Lock()

    def set(self, name: str, state: str, text: str = "", log: str = "") -> None:
        with self.lock:
            self.states[name] = (state, text)
            if log:
                self.logs[name] = log

    def lines(self) -> List[Tuple[str, str]]:
        with self.lock:
            states = dict(self.states)
            logs = dict(self.logs)
        result = []
        for name, (state, text) in states.items():
            if state == "running":
                text = f"running: {text + ', ' if text else ''}" + progress_text(
                    self.specs[name], logs.get(name, ""))
            elif state == "queued":
                text = "queued"
            result.append((name, text))
        return result

    def render(self, final: bool = False) -> None:
        lines = self.lines()
        width = max((len(name) for name, _ in lines), default=0)
        if self.live:
            columns = shutil.get_terminal_size((120, 20)).columns
            out = [f"{name:<{width}}  {text}"[:columns - 1] for name, text in lines]
            counts = {}
            for _, text in lines:
                key = text.split(" ", 1)[0].split(":")[0].lower()
                counts[key] = counts.get(key, 0) + 1
            out.append("  ".join(f"{n} {k}" for k, n in sorted(counts.items())))
            erase = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.stream.write(erase + "".join(f"\x1b[2K{line}\n" for line in out))
            self.stream.flush()
            self.drawn = 0 if final else len(out)
            return
        for name, text in lines:
            summary = re.sub(r" step \d+/\d+", "", text)  # one line per epoch, not per step
            if self.printed.get(name) != summary:
                self.printed[name] = summary
                self.stream.write(f"[{time.strftime('%H:%M:%S')}] {name:<{width}}  {summary}\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- local pool
def run_local(specs: Sequence[RowSpec], slots: Sequence[Slot], processes: int = 1,
              board: Optional[StatusBoard] = None) -> List[Outcome]:
    """Run the rows ``len(slots)`` at a time; each waits for a free slot. A failed row does not
    stop the others; Ctrl-C stops them all (each saves its checkpoint) and starts no more."""
    board = board or StatusBoard(specs)
    free: "queue.Queue[Slot]" = queue.Queue()
    for slot in slots:
        free.put(slot)
    stopping = threading.Event()
    outcomes: Dict[str, Outcome] = {}
    if processes == 1:
        fork_context()  # start the server (it imports main.py once) before the workers need it

    def work(spec: RowSpec) -> Outcome:
        if stopping.is_set():
            return Outcome("stopped", "not started (stopped)")
        slot = free.get()
        try:
            if stopping.is_set():
                return Outcome("stopped", "not started (stopped)")
            runner = (fork_runner(slot.gpus, slot.cores, slot.threads) if processes == 1 else
                      popen_runner(slot.gpus, slot.cores, slot.threads, processes))

            def announce(argv: List[str], status: str, moved: str) -> None:
                verb = "continuing" if status == "resume" else "training"
                board.set(spec.name, "running", f"{verb} on {slot.describe()}")

            outcome = execute_row(spec, runner, announce=announce)
        except Exception as error:  # a launcher bug must not hide the other rows' results
            outcome = Outcome("failed", f"FAILED in the launcher: {type(error).__name__}: {error}")
        finally:
            free.put(slot)
        board.set(spec.name, outcome.state, outcome.text)
        return outcome

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = {pool.submit(work, spec): spec for spec in specs}
        pending = set(futures)
        try:
            while pending:
                for spec in specs:  # a row's log is known once it has started
                    state = read_state(spec.save_path, spec.name)
                    if state.get("state") == "running" and state.get("pid") == os.getpid():
                        board.logs[spec.name] = state.get("log", "")
                board.render()
                _, pending = concurrent.futures.wait(pending, timeout=1.0)
        except KeyboardInterrupt:
            # the rows got the same Ctrl-C: each saves its checkpoint and exits 130
            stopping.set()
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)
        for future, spec in futures.items():
            outcomes[spec.name] = (future.result() if not future.cancelled() else
                                   Outcome("stopped", "not started (stopped)"))
    board.render(final=True)
    return [outcomes[spec.name] for spec in specs]


# ----------------------------------------------------------------------------- SLURM
class RowJob:
    """One row as a submitit job. ``checkpoint`` is submitit's hook on preemption and at the
    time limit: it has main.py save and stop, then returns the same job to requeue, which
    decides again from the run folder and so continues with ``--resume``."""

    def __init__(self, spec: RowSpec, gpus_per_row: int = 1,
                 threads: Optional[int] = None) -> None:
        self.spec = spec
        self.gpus_per_row = gpus_per_row
        self.threads = threads  # torch threads of a CPU row: the job's CPUs
        self._child: Optional[subprocess.Popen] = None
        self._terminated = False

    def __getstate__(self) -> Dict:
        return {"spec": self.spec, "gpus_per_row": self.gpus_per_row, "threads": self.threads}

    def __setstate__(self, state: Dict) -> None:
        self.__init__(state["spec"], state["gpus_per_row"], state.get("threads"))

    def _on_sigterm(self, signum, frame) -> None:
        # SLURM preempts with SIGTERM to every process of the job, main.py included, then USR2
        # to submitit: remember it, so that checkpoint() does not send main.py a second one
        # (a second SIGTERM stops main.py at once, without the save).
        self._terminated = True

    def _set_child(self, child: Optional[subprocess.Popen]) -> None:
        self._child = child

    def __call__(self) -> Dict:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threads = os.environ.get("SLURM_CPUS_PER_TASK") or self.threads
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = (f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else
               os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", ""))
        runner = popen_runner(threads=int(threads) if threads else None,
                              processes=self.gpus_per_row, on_child=self._set_child)
        outcome = execute_row(self.spec, runner, job=job)
        print(f"{self.spec.name}: {outcome.text}", flush=True)
        if outcome.state == "stopped" and self._terminated:
            # Preemption: main.py got SLURM's SIGTERM and saved; submitit's USR2 follows and
            # requeues this job from its handler (which exits). A plain scancel sends none.
            deadline = time.time() + 60
            while time.time() < deadline:
                time.sleep(1)
        if not outcome.finished and outcome.state != "elsewhere":
            raise RuntimeError(f"row {self.spec.name}: {outcome.text}")
        return dataclasses.asdict(outcome)

    def checkpoint(self, *args, **kwargs):
        """submitit's checkpointing hook (called on USR2): stop main.py with its own save."""
        import submitit

        child = self._child
        if child is not None and not _child_exited(child):
            if not self._terminated:
                child.send_signal(signal.SIGTERM)  # main.py: finish the step, save, exit 130
            deadline = time.time() + STOP_WAIT_S
            while not _child_exited(child) and time.time() < deadline:
                time.sleep(0.2)
        write_state(self.spec, state="requeued", text=f"requeued at epoch "
                    f"{last_epoch(self.spec.folder)} of {self.spec.n_epochs}", time=time.time())
        return submitit.helpers.DelayedSubmission(RowJob(self.spec, self.gpus_per_row,
                                                         self.threads))


def read_jobs(save_path: str) -> Dict[str, str]:
    try:
        with open(os.path.join(save_path, SWEEP_DIR, JOBS_FILE)) as handle:
            jobs = json.load(handle)
        return {str(k): str(v) for k, v in jobs.items()} if isinstance(jobs, dict) else {}
    except (OSError, ValueError):
        return {}


def queue_states(job_ids: Sequence[str]) -> Dict[str, str]:
    """SLURM state of each job id still known to squeue (array tasks as ``<array>_<task>``)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True,
                            text=True, timeout=60)
    states = dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) > 1)
    return {job: states[job] for job in job_ids if job in states}


@contextlib.contextmanager
def _detached_output(detach: bool):
    """Local jobs' controllers outlive the launcher and inherit its stdout and stderr; give them
    /dev/null instead, so that a pipe reading the launcher (``| tee``) ends with it. Their
    output goes to submitit's log files anyway."""
    if not detach:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved + [null]:
            os.close(descriptor)


def submit(specs: Sequence[RowSpec], save_path: str, settings: argparse.Namespace,
           cluster: Optional[str] = None) -> Tuple[List[Tuple[str, str]], list]:
    """Submit the rows that are neither finished, queued, running nor refused, as one job array.
    Returns ``(row name, what happened)`` per row and the submitit jobs."""
    import submitit

    recorded = read_jobs(save_path)
    queued = queue_states(list(recorded.values())) if cluster != "local" else {}
    results, to_submit = [], []
    for spec in specs:
        status, detail = row_status(spec.folder, spec.options)
        holder = held_elsewhere(spec)
        job = recorded.get(spec.name)
        if status == "finished":
            results.append((spec.name, f"finished (skipped): {detail}"))
        elif status == "conflict":
            results.append((spec.name, f"REFUSED: {spec.folder} was made with other settings: "
                                       f"{detail}; move it away to rerun this row"))
        elif holder:
            results.append((spec.name, f"running elsewhere ({holder})"))
        elif job in queued:
            results.append((spec.name, f"in SLURM already: job {job} {queued[job]}"))
        else:
            to_submit.append(spec)
    jobs = []
    if to_submit:
        if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise LaunchError("--slurm: sbatch and srun are not found here; submit from a SLURM "
                              "login node (or use --slurm_cluster local to try the jobs on this "
                              "machine)")
        executor = submitit.AutoExecutor(folder=os.path.join(save_path, SWEEP_DIR, "submitit",
                                                             "%j"),
                                         cluster=cluster,
                                         slurm_max_num_timeout=settings.slurm_max_timeouts,
                                         local_max_num_timeout=settings.slurm_max_timeouts)
        parameters = dict(name=settings.slurm_name, timeout_min=settings.slurm_time,
                          cpus_per_task=settings.cpus_per_row, gpus_per_node=settings.job_gpus,
                          tasks_per_node=1, nodes=1, slurm_partition=settings.slurm_partition,
                          slurm_array_parallelism=settings.slurm_parallel,
                          slurm_signal_delay_s=settings.slurm_signal_delay,
                          slurm_additional_parameters=settings.slurm_extra or None)
        if settings.mem_gb:
            parameters["mem_gb"] = settings.mem_gb
        try:
            executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
            with _detached_output(cluster == "local"), executor.batch():
                for spec in to_submit:
                    jobs.append(executor.submit(RowJob(spec, max(settings.job_gpus, 1),
                                                       settings.cpus_per_row)))
        except (subprocess.CalledProcessError, RuntimeError, ValueError) as error:
            raise LaunchError(f"sbatch refused the rows: {error}") from None
        for spec, job in zip(to_submit, jobs):
            recorded[spec.name] = str(job.job_id)
            results.append((spec.name, f"submitted: SLURM job {job.job_id}"))
            write_state(spec, state="submitted", job=str(job.job_id), text="")
        path = sweep_path(save_path, JOBS_FILE)
        with open(path + ".tmp", "w") as handle:
            json.dump(recorded, handle, indent=1)
        os.replace(path + ".tmp", path)
    order = {spec.name: i for i, spec in enumerate(specs)}
    return sorted(results, key=lambda item: order[item[0]]), jobs


def status_lines(specs: Sequence[RowSpec]) -> List[Tuple[str, str, bool]]:
    """``(row, status text, finished)`` of each row from its run folder, its state file, the
    locks and squeue."""
    by_path: Dict[str, Dict[str, str]] = {}
    for spec in specs:
        by_path.setdefault(spec.save_path, read_jobs(spec.save_path))
    all_jobs = [job for jobs in by_path.values() for job in jobs.values()]
    queued = queue_states(all_jobs)
    lines = []
    for spec in specs:
        status, detail = row_status(spec.folder, spec.options)
        state = read_state(spec.save_path, spec.name)
        job = by_path[spec.save_path].get(spec.name)
        holder = held_elsewhere(spec)
        log = os.path.join(spec.folder, LOG_FILE)
        if not os.path.isfile(log):
            log = state.get("log", "")
        slurm = f"SLURM job {job} {queued[job]}" if job in queued else ""
        if status == "finished":
            text = f"finished ({detail})"
        elif status == "conflict":
            text = f"REFUSED: made with other settings: {detail}"
        elif holder:
            text = f"running ({slurm or holder}): {progress_text(spec, log)}"
        elif slurm:
            text = f"queued ({slurm})" + (f", at epoch {last_epoch(spec.folder)} of "
                                          f"{spec.n_epochs}" if status == "resume" else "")
        elif state.get("state") in ("failed", "stopped"):
            text = state.get("text") or f"FAILED (exit {state.get('code')})"
        elif status == "resume":
            text = f"stopped at epoch {last_epoch(spec.folder)} of {spec.n_epochs} (continued " \
                   f"by the next launch)"
        elif state.get("state") == "submitted":
            text = f"FAILED: SLURM job {state.get('job')} ended before training (see " \
                   f"{os.path.join(spec.save_path, SWEEP_DIR, 'submitit')})"
        else:
            text = "missing"
        lines.append((spec.name, text, status == "finished"))
    return lines
