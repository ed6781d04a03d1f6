"""The run folder: config.json, metrics.csv, TensorBoard events, checkpoints, summary.

Written by ``main.py``; read back by :func:`read_run` (a :class:`RunRecord`: the config, the
metric rows, the last epoch and the best one by the run's own ``--storage_metric``), the one
reader that main's summary, ``tools.sweep``, ``tools.paper_tables``, ``tools.summarize`` and
``tools.figures`` share.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from utilities.errors import UserError
from utilities.options import ConfigError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "training_summary.txt"
LAST_CHECKPOINT = "checkpoint_last.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"
LOCK_FILE = ".lock"
_LOCKS: Dict[str, int] = {}  # run folder -> open descriptor holding its lock


class RunFolderBusy(UserError, ValueError):
    """Another process trains in (or resumes) this run folder."""


def lock_run_folder(folder: str) -> None:
    """Take an exclusive lock on ``folder`` (flock on its .lock file) for as long as this process
    trains in it, so that a second process resuming the same folder stops at once instead of
    interleaving metrics.csv and overwriting checkpoints. Released by :func:`release_locks` or
    when the process ends, however it ends."""
    folder = os.path.abspath(folder)
    if folder in _LOCKS:
        return
    path = os.path.join(folder, LOCK_FILE)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ValueError(f"cannot create the lock file '{path}': {error.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip()
        os.close(descriptor)
        raise RunFolderBusy(f"run folder '{folder}' is in use by another process"
                            f"{f' (pid {holder})' if holder else ''}; wait for it to end or stop "
                            f"it first") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _LOCKS[folder] = descriptor


def release_locks() -> None:
    for folder in list(_LOCKS):
        os.close(_LOCKS.pop(folder))


def default_run_name(dataset: str, arch: str, seed: int) -> str:
    """``<dataset>_<arch>_s<seed>_<date>_<time>``, one folder name: the '/' of a timm arch
    (``timm/vit_small_patch16_224``) becomes '-', so the run is not nested one level deeper."""
    arch = arch.replace("/", "-").replace(os.sep, "-")
    return f"{dataset}_{arch}_s{seed}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


RUN_MARKERS = (CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE)  # any of them: a run folder


def is_run_folder(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, marker)) for marker in RUN_MARKERS)


def enclosing_run(path: str) -> Optional[str]:
    """The run folder that ``path`` lies inside (``path`` excluded), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if is_run_folder(folder):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def new_run_base(save_path: str, savename: str) -> str:
    """Where a new run named ``savename`` goes under ``save_path``; refused (ValueError, before
    anything is read) when it would lie inside an existing run folder, where no tool finds it:
    ``--savename NAME/`` or ``NAME/sub`` with NAME an existing run, or a --save_path inside one."""
    base = os.path.normpath(os.path.join(save_path, savename)) if savename else \
        os.path.normpath(os.path.join(save_path, "run"))
    inside = enclosing_run(base)
    if savename.endswith(("/", os.sep)) and is_run_folder(base):
        raise ValueError(f"--savename '{savename}' names the existing run folder '{base}' as a "
                         f"parent; a new run there would be nested where no tool finds it: "
                         f"choose another --savename, or continue that run with --resume")
    if inside is not None:
        raise ValueError(f"--save_path '{save_path}' with --savename '{savename}' puts the new run "
                         f"inside the run folder '{inside}', where no tool finds it; choose a "
                         f"--savename (or --save_path) outside existing runs, or continue that "
                         f"run with --resume")
    return base


def create_run_folder(save_path: str, savename: str, dataset: str, arch: str, seed: int) -> str:
    """Create a fresh run folder; an existing name gets a numeric suffix, never overwritten, and
    a name inside an existing run folder is refused (:func:`new_run_base`)."""
    base = new_run_base(save_path, savename or default_run_name(dataset, arch, seed))
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
    """The run's config.json as a dict; a missing, non-JSON or non-object file raises
    ConfigError naming it (the keys are checked by utilities.options.check_saved_options)."""
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path) as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"'{folder}' holds no {CONFIG_FILE}; expected a run folder written by "
                          f"main.py") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read '{path}': {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"'{path}' is not valid JSON ({error.msg} at line {error.lineno}); "
                          f"the file is damaged") from None
    if not isinstance(config, dict):
        raise ConfigError(f"'{path}' holds a JSON {type(config).__name__}, expected an object of "
                          f"options; the file is damaged")
    return config


def class_list_sha256(class_names: Sequence[str]) -> str:
    """Fingerprint of a split's classes: sha256 of the sorted class names, one per line."""
    return hashlib.sha256("\n".join(sorted(map(str, class_names))).encode()).hexdigest()


# What config.json records about the training data (training_data_record), compared on resume.
TRAINING_DATA_KEYS = ("train_classes", "train_images", "train_classes_sha256")


def training_data_record(class_names: Sequence[str], num_images: int) -> Dict:
    """The TRAINING_DATA_KEYS entries of config.json for this training split."""
    return dict(zip(TRAINING_DATA_KEYS, (len(class_names), int(num_images),
                                         class_list_sha256(class_names))))


def check_same_training_data(saved: Dict, now: Dict, config_path: str) -> None:
    """Refuse to resume on other training data than the run started with, naming what changed
    (the checkpoint's proxies, class counters and sampler position belong to the old data)."""
    changes = []
    if saved.get("train_classes") is not None and saved["train_classes"] != now["train_classes"]:
        changes.append(f"{saved['train_classes']} training classes then, {now['train_classes']} "
                       f"now")
    elif saved.get("train_classes_sha256") not in (None, now["train_classes_sha256"]):
        changes.append("the training class names differ")
    if saved.get("train_images") is not None and saved["train_images"] != now["train_images"]:
        changes.append(f"{saved['train_images']} training images then, {now['train_images']} now")
    if changes:
        raise ConfigError(f"the training data changed since the run started ({config_path}): "
                          f"{'; '.join(changes)}. Resume with the data it was trained on, or start "
                          f"a new run")


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


# ----------------------------------------------------------------------------- reading a run
Row = Dict[str, Optional[float]]
DEFAULT_STORAGE_METRIC = "recall@1"


def number(text: Optional[str]) -> Optional[float]:
    """A metrics.csv cell as a number; empty or non-numeric cells are None."""
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_metrics(path: str) -> List[Row]:
    """metrics.csv rows as numbers (empty cells None). A file without an ``epoch`` column, a row
    with more or fewer cells than the header, a non-integer epoch or a non-numeric cell raises
    ValueError naming the line: such a file is not trusted (a run could pass for finished)."""
    rows = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if "epoch" not in (reader.fieldnames or []):
            raise ValueError("metrics.csv has no 'epoch' column")
        for row in reader:
            line = reader.line_num
            if None in row or any(value is None for value in row.values()):
                raise ValueError(f"metrics.csv line {line} has {'more' if None in row else 'fewer'}"
                                 f" cells than its header")
            numbers = {key: number(value) for key, value in row.items()}
            bad = [key for key, value in row.items() if value.strip() and numbers[key] is None]
            if bad:
                raise ValueError(f"metrics.csv line {line}: '{bad[0]}' is not a number")
            epoch = numbers["epoch"]
            if epoch is None or epoch != int(epoch) or epoch < 0:
                raise ValueError(f"metrics.csv line {line}: epoch '{row['epoch']}' is not a whole "
                                 f"number")
            rows.append(numbers)
    return rows


def read_metrics_lenient(folder: str) -> List[Row]:
    """metrics.csv rows as numbers, unreadable cells None (a run still being written)."""
    return [{key: number(value) for key, value in row.items() if key is not None}
            for row in MetricsTable(folder).rows()]


def find_run_folders(root: str) -> List[str]:
    """Folders under ``root`` (or ``root`` itself) holding config.json and metrics.csv."""
    if not os.path.isdir(root):
        raise NotARunsFolder(f"--runs '{root}' is not a folder; expected a folder of run folders "
                             f"(e.g. Training_Results)")
    found = []
    for folder, subfolders, files in os.walk(root):
        if CONFIG_FILE in files and METRICS_FILE in files:
            found.append(folder)
            subfolders[:] = []  # a run folder holds no further runs
        subfolders.sort()
    return sorted(found)


class NotARunsFolder(UserError, ValueError):
    """The folder given to search for run folders is not a folder."""


@dataclass
class RunRecord:
    """One run folder, read: its configuration and metric rows (numbers, None where empty)."""

    folder: str
    config: Dict
    rows: List[Row]
    mtime: float = 0.0

    @property
    def epochs_done(self) -> int:
        """The last epoch with a row (0: none, or only the untrained row 0)."""
        return max((int(r["epoch"]) for r in self.rows if r.get("epoch") is not None), default=0)

    @property
    def n_epochs(self) -> Optional[int]:
        value = self.config.get("n_epochs")
        return int(value) if value is not None else None

    @property
    def finished(self) -> bool:
        return self.n_epochs is not None and self.epochs_done >= self.n_epochs

    @property
    def trained_rows(self) -> List[Row]:
        """Rows of trained epochs (row 0 is the untrained network of --eval_initial)."""
        return [r for r in self.rows if r.get("epoch") is not None and r["epoch"] >= 1]

    @property
    def selection_key(self) -> str:
        """``<split>/<--storage_metric>``, the column main.py selects checkpoint_best.pth by:
        split ``val`` when the run has a validation split, else ``test``."""
        split = "val" if any(key.startswith("val/") for row in self.rows for key in row) else "test"
        return f"{split}/{self.config.get('storage_metric') or DEFAULT_STORAGE_METRIC}"

    def pick(self, mode: str) -> Optional[Row]:
        """The metrics row of the last epoch, or of the best one by the selection metric (the
        first of equal maxima, as main.py keeps only a strictly better epoch)."""
        rows = self.trained_rows
        if not rows:
            return None
        if mode == "last":
            return max(rows, key=lambda r: r["epoch"])
        key = self.selection_key
        scored = [r for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        if not scored:
            return None
        best = max(r[key] for r in scored)
        return min((r for r in scored if r[key] == best), key=lambda r: r["epoch"])

    def max_per_metric(self, column: str) -> Optional[float]:
        """``column``'s own maximum over trained epochs (the published summary), None if absent."""
        values = [r[column] for r in self.trained_rows
                  if r.get(column) is not None and not math.isnan(r[column])]
        return max(values) if values else None


def read_run(folder: str, strict: bool = True) -> RunRecord:
    """The run in ``folder``: config.json (:func:`read_config`) and metrics.csv (strict:
    :func:`read_metrics`, else unreadable cells None; a missing metrics.csv gives no rows)."""
    config = read_config(folder)
    path = os.path.join(folder, METRICS_FILE)
    if not os.path.isfile(path):
        return RunRecord(folder, config, [])
    rows = read_metrics(path) if strict else read_metrics_lenient(folder)
    return RunRecord(folder, config, rows, mtime=os.path.getmtime(path))
