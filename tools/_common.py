"""What the tools commands share: safe output files, image lists, embedding files.

Every command reports bad input through ``utilities.errors.run_command`` (one line, exit 2) and
writes every output through :func:`check_output` (before any work) and :func:`atomic_output`
(a temporary file in the same folder, renamed into place only when complete, removed on any
failure or Ctrl-C), so that no command writes over a run's own files or a file it did not write.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from das.figure import FREQUENCY_PATTERN
from datasets._data import DataError
from datasets._decode import load_image
from datasets._layout import IMAGE_EXTENSIONS, is_image_name, leaf_class_folders
from evaluation import compute_embeddings
from utilities import run_folder as rf
from utilities.device import choose_device  # noqa: F401 (the tools import it from here)
from utilities.data import default_workers  # noqa: F401 (the tools import it from here)
from utilities.errors import UserError

EMBEDDING_FORMAT = 1  # version of the .npz layout written by tools.embed


class ToolError(UserError, ValueError):
    """Bad input to a tools command; the message names the file, flag or value."""


# ----------------------------------------------------------------------------- output files
WRITTEN_BY = "written_by"  # key naming the tools command in every JSON a command writes
PNG_MARK = b"Written-By"  # PNG text chunk key marking a figure a tools command drew
RUN_FILES = (rf.CONFIG_FILE, rf.METRICS_FILE, rf.SUMMARY_FILE, rf.LAST_CHECKPOINT,
             rf.BEST_CHECKPOINT, rf.LOCK_FILE)
# Headers of the CSV files the commands write (tools.search, tools.summarize, paper_tables).
CSV_HEADERS = ("query,rank,neighbour,", "group,seeds", "table,method,", "folder,used,")


def run_file_reason(path: str) -> Optional[str]:
    """Why ``path`` (after links) is one of a training run's own files, or None."""
    real = os.path.realpath(path)
    folder, name = os.path.split(real)
    if not rf.is_run_folder(folder):
        return None
    if (name in RUN_FILES or name.startswith(("events.out.tfevents", FREQUENCY_PATTERN, ".tmp_"))
            or name.endswith((".pth", ".pt.tmp"))):
        return f"'{real}' is a file of run folder '{folder}', written by main.py"
    return None


def _json_is_ours(path: str) -> bool:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    if str(data.get(WRITTEN_BY, "")).startswith("tools."):
        return True
    # written before WRITTEN_BY existed: tools.evaluate's report, tools.export's description
    return {"checkpoint", "metrics", "split"} <= set(data) or {"format", "input", "check"} <= set(
        data)


def _png_is_ours(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data.startswith(b"\x89PNG") and b"tEXt" + PNG_MARK + b"\0" in data


def written_by_tools(path: str) -> bool:
    """Whether the existing file ``path`` was written by a tools command (so writing it again
    replaces the command's own earlier output, not a user's file or a run's)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".json":
        return _json_is_ours(path)
    if suffix == ".png":
        return _png_is_ours(path)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {"format", "embeddings", "paths"} <= set(data.files)
        except Exception:  # noqa: BLE001 - any unreadable file is not ours
            return False
    if suffix in (".csv", ".md"):
        try:
            with open(path) as handle:
                first = handle.readline()
        except (OSError, UnicodeDecodeError):
            return False
        return first.startswith(CSV_HEADERS) if suffix == ".csv" else first.startswith("## Table")
    if suffix in (".pt", ".onnx"):  # tools.export: its description FILE.json says so
        description = path + ".json"
        if not (os.path.isfile(description) and _json_is_ours(description)):
            return False
        with open(description) as handle:
            return json.load(handle).get("file") == os.path.basename(path)
    return False


def check_output(path: str, flag: str, suffixes: Sequence[str]) -> str:
    """Refuse, before any work, an output path the command must not write: a folder, a wrong
    suffix, a missing or read-only folder, one of a run's own files, or an existing file that no
    tools command wrote. Returns ``path``."""
    if path.endswith(os.sep) or os.path.isdir(path):
        raise ToolError(f"{flag} '{path}' is a folder; expected a file name ending in "
                        f"{' or '.join(suffixes)}")
    reason = run_file_reason(path)
    if reason:
        raise ToolError(f"{flag} '{path}': {reason}; refusing to write over it (choose another "
                        f"file name)")
    if os.path.splitext(path)[1].lower() not in suffixes:
        raise ToolError(f"{flag} '{path}' must end in {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ToolError(f"{flag} '{path}': folder '{folder}' does not exist")
    if os.path.lexists(path) and not (os.path.isfile(path) and written_by_tools(path)):
        raise ToolError(f"{flag} '{path}' already exists and was not written by a tools command; "
                        f"refusing to write over it (choose another file name or remove it)")
    if not os.access(folder, os.W_OK):
        raise ToolError(f"{flag} '{path}': folder '{folder}' is not writable (read-only?); "
                        f"choose another folder")
    return path


def write_failure(path: str, error: OSError) -> ToolError:
    """One line for a write that failed (full disk, read-only folder, quota)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.1f}" \
                   f" MiB free"
        except OSError:
            free = "free space unknown"
        reason = f"the disk is full ({free})" if error.errno != errno.EFBIG else \
            "the file size limit was reached"
    else:
        reason = error.strerror or type(error).__name__
    return ToolError(f"cannot write '{path}': {reason}; nothing was written")


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; when the block ends normally it is renamed to
    ``path``, otherwise (an error, a full disk, Ctrl-C) it is removed and ``path`` is untouched.
    An ``OSError`` becomes a one-line :class:`ToolError` naming ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".tmp_{stem}_", suffix=suffix)
    except OSError as error:
        raise write_failure(path, error) from None
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise write_failure(path, error) from None
    finally:
        if os.path.exists(temporary):
            try:
                os.remove(temporary)
            except OSError:
                pass


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as temporary:
        with open(temporary, "w") as handle:
            handle.write(text)


def mark_png(path: str, command: str) -> None:
    """Add a ``Written-By: <command>`` text chunk to the PNG at ``path`` (before IEND, without
    re-encoding), so that a later run of a command knows the file is a figure it may replace."""
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(b"\x89PNG") or data[-12:-8] != b"\0\0\0\0" or data[-8:-4] != b"IEND":
        return  # not a PNG matplotlib/PIL wrote completely; left as it is
    body = b"tEXt" + PNG_MARK + b"\0" + command.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    with open(path, "wb") as handle:
        handle.write(data[:-12] + chunk + data[-12:])


MAX_SEED = 2 ** 32 - 1  # as main.py's --seed


def check_seed(seed: int, flag: str = "--seed") -> int:
    """``seed`` when numpy and torch both accept it (0..2**32-1, main.py's range)."""
    if not 0 <= seed <= MAX_SEED:
        raise ToolError(f"{flag} must be in 0..{MAX_SEED}, got {seed}")
    return seed


MAX_BATCH = 65536
MAX_WORKERS = max(16, 4 * (os.cpu_count() or 1))  # loader worker processes this machine can run


def check_loader(batch_size: Optional[int], num_workers: int) -> None:
    """Refuse --batch_size (None: the run's --eval_bs) and --num_workers out of range."""
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
        raise ToolError(f"--batch_size must be in 1..{MAX_BATCH}, got {batch_size}")
    if not 0 <= num_workers <= MAX_WORKERS:
        raise ToolError(f"--num_workers must be in 0..{MAX_WORKERS} on this machine, got "
                        f"{num_workers}")




# ----------------------------------------------------------------------------- image lists
@dataclass
class ImageList:
    """Image paths with class labels when they come from class subfolders."""

    root: str
    paths: List[str]
    labels: Optional[np.ndarray] = None  # index into class_names
    class_names: List[str] = field(default_factory=list)


def is_image_file(name: str) -> bool:

    return is_image_name(name) and not os.path.basename(name).startswith(".")


def list_images(source: str, what: str = "--images") -> ImageList:
    """Every image under folder ``source`` (recursively, sorted), or the paths of list file
    ``source`` (one per line, relative to the list file's folder; '#' starts a comment).

    A folder whose images all lie in subfolders is a class tree, read by the rule of
    ``--dataset folder`` (datasets._layout.leaf_class_folders): each leaf folder is a class named
    by its path relative to ``source`` (``alphabet/character``).
    """

    if os.path.isdir(source):
        root = os.path.abspath(source)
        paths = []
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders
                                   if not d.startswith(".") and d != "__MACOSX")
            paths += [os.path.join(folder, name) for name in sorted(files) if is_image_file(name)]
        if not paths:
            raise ToolError(f"{what} '{source}' holds no image files (looked recursively for "
                            f"{' '.join(IMAGE_EXTENSIONS)})")
        if all(os.path.dirname(path) != root for path in paths):
            # a class tree: its classes as --dataset folder reads them (leaf folders, one rule)
            try:
                classes = leaf_class_folders(root)
            except DataError as error:
                raise ToolError(f"{what} '{source}' is read as a class tree: {error}") from None
            paths = [path for _, images in classes for path in images]
            labels = np.repeat(np.arange(len(classes)), [len(images) for _, images in classes])
            return ImageList(root, paths, labels, [name for name, _ in classes])
        return ImageList(root, paths)
    if os.path.isfile(source):
        if is_image_file(source):
            return ImageList(os.path.dirname(os.path.abspath(source)), [os.path.abspath(source)])
        root = os.path.dirname(os.path.abspath(source))
        try:
            with open(source) as handle:
                lines = [line.strip() for line in handle]
        except (OSError, UnicodeDecodeError) as error:
            raise ToolError(f"{what} '{source}' is neither a folder nor a readable list file of "
                            f"image paths: {error}") from None
        paths = [os.path.normpath(os.path.join(root, os.path.expanduser(line)))
                 for line in lines if line and not line.startswith("#")]
        if not paths:
            raise ToolError(f"{what} list file '{source}' names no images (expected one path per "
                            f"line)")
        return ImageList(root, paths)
    raise ToolError(f"{what} '{source}' does not exist; expected an image folder, an image or a "
                    f"list file of image paths")


class TolerantImages(torch.utils.data.Dataset):
    """``(image, label, index)`` items like :class:`datasets.ImageDataset`, except that an image
    that cannot be read gives a blank tensor and label -1, so one bad file among thousands is
    skipped instead of stopping the batch loop (:func:`embed_images` drops those rows)."""

    def __init__(self, paths: Sequence[str], labels: Optional[np.ndarray], transform: Callable,
                 crop_size: int) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.transform = transform
        self.blank_shape = (3, crop_size, crop_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:

        label = 0 if self.labels is None else int(self.labels[index])
        try:
            return self.transform(load_image(self.paths[index])), label, index
        except Exception:  # any decoding failure (PIL raises many types): skip, listed later
            return torch.zeros(self.blank_shape, dtype=torch.uint8), -1, index  # as the transform


def unreadable_reason(path: str) -> str:

    if not os.path.exists(path):
        return "does not exist"
    try:
        load_image(path)
    except Exception as error:  # noqa: BLE001 - the reason is reported, not handled
        text = error.short_message() if isinstance(error, DataError) else str(error)
        return text.replace(f"cannot decode image '{path}': ", "")
    return "could not be transformed"


def embed_images(trained, images: ImageList, device: torch.device, batch_size: int,
                 num_workers: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, str]]:
    """``(embeddings of the readable images, their indices into images.paths, {unreadable path:
    reason})``, computed by :func:`evaluation.compute_embeddings` (the evaluation's own path)."""

    dataset = TolerantImages(images.paths, images.labels, trained.transform, trained.crop_size)
    trained.model.to(device)
    embeddings, labels = compute_embeddings(trained.model, dataset, device, batch_size,
                                            num_workers)
    kept = np.flatnonzero(labels >= 0)
    failed = {images.paths[i]: unreadable_reason(images.paths[i])
              for i in np.flatnonzero(labels < 0)}
    return embeddings[kept], kept, failed


# ----------------------------------------------------------------------------- .npz files
@dataclass
class EmbeddingFile:
    """What tools.embed writes (and tools.search reads)."""

    embeddings: np.ndarray  # (N, D) float32
    paths: np.ndarray  # (N,) str
    labels: Optional[np.ndarray] = None  # (N,) int64 into class_names
    class_names: Optional[np.ndarray] = None
    normalized: bool = False
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    skipped_reasons: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    run: str = ""
    checkpoint: str = ""
    arch: str = ""

    def class_of(self, rows: np.ndarray) -> Optional[np.ndarray]:
        if self.labels is None:
            return None
        return np.asarray(self.class_names)[self.labels[rows]]

    def save(self, out: str) -> None:
        """Write the ``.npz`` through :func:`atomic_output` (``out`` checked by
        :func:`check_output` first)."""
        arrays = dict(embeddings=self.embeddings.astype(np.float32),
                      paths=np.asarray(self.paths, dtype=str),
                      normalized=np.array(self.normalized),
                      skipped=np.asarray(self.skipped, dtype=str),
                      skipped_reasons=np.asarray(self.skipped_reasons, dtype=str),
                      run=np.array(self.run), checkpoint=np.array(self.checkpoint),
                      arch=np.array(self.arch), format=np.array(EMBEDDING_FORMAT))
        if self.labels is not None:
            arrays.update(labels=self.labels.astype(np.int64),
                          class_names=np.asarray(self.class_names, dtype=str))
        with atomic_output(out) as temporary:  # ends in .npz: np.savez appends nothing
            np.savez(temporary, **arrays)

    @classmethod
    def load(cls, path: str, what: str) -> "EmbeddingFile":
        if not os.path.isfile(path):
            raise ToolError(f"{what} '{path}' does not exist; expected an .npz written by "
                            f"tools.embed")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as error:  # noqa: BLE001 - numpy raises several types for bad files
            raise ToolError(f"{what} '{path}' is not a readable .npz file: {error}") from None
        missing = [key for key in ("embeddings", "paths") if key not in arrays]
        embeddings = arrays.get("embeddings")
        if missing or embeddings.ndim != 2 or arrays["paths"].ndim != 1 \
                or len(embeddings) != len(arrays["paths"]):
            raise ToolError(f"{what} '{path}' lacks {' and '.join(missing) or 'matching'} "
                            f"'embeddings' (N, D) and 'paths' (N,) arrays; expected an .npz "
                            f"written by tools.embed")
        if not np.issubdtype(embeddings.dtype, np.floating) or embeddings.shape[1] == 0:
            raise ToolError(f"{what} '{path}': 'embeddings' is {embeddings.dtype} of shape "
                            f"{embeddings.shape}; expected float (N, D) with D >= 1")
        if len(embeddings) == 0:
            raise ToolError(f"{what} '{path}' holds no embeddings (0 rows); embed at least one "
                            f"image with tools.embed")
        bad_rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        if len(bad_rows):
            raise ToolError(f"{what} '{path}': {len(bad_rows)} of its {len(embeddings)} "
                            f"embeddings hold NaN or infinite values (first: row {bad_rows[0]}, "
                            f"'{arrays['paths'][bad_rows[0]]}'); re-embed with a sound "
                            f"checkpoint")
        has_labels = "labels" in arrays or "class_names" in arrays
        labels = class_names = None
        if has_labels:
            labels, class_names = arrays.get("labels"), arrays.get("class_names")
            if labels is None or class_names is None:
                present, absent = (("labels", "class_names") if labels is not None
                                   else ("class_names", "labels"))
                raise ToolError(f"{what} '{path}' holds '{present}' without '{absent}'; "
                                f"expected both or neither")
            if labels.shape != (len(embeddings),) or not np.issubdtype(labels.dtype, np.integer):
                raise ToolError(f"{what} '{path}': 'labels' is {labels.dtype} of shape "
                                f"{labels.shape}; expected {len(embeddings)} integers")
            if class_names.ndim != 1 or ((labels < 0) | (labels >= len(class_names))).any():
                bad = labels[(labels < 0) | (labels >= len(class_names))]
                raise ToolError(f"{what} '{path}': label {bad[0] if len(bad) else '?'} is out "
                                f"of range for its {len(class_names)} class_names; expected "
                                f"labels in 0..{len(class_names) - 1}")
        try:
            return cls(embeddings.astype(np.float32), arrays["paths"].astype(str), labels,
                       class_names, bool(arrays.get("normalized", False)),
                       arrays.get("skipped", np.zeros(0, dtype=str)),
                       arrays.get("skipped_reasons", np.zeros(0, dtype=str)),
                       str(arrays.get("run", "")), str(arrays.get("checkpoint", "")),
                       str(arrays.get("arch", "")))
        except (TypeError, ValueError) as error:
            raise ToolError(f"{what} '{path}' holds an array of the wrong kind ({error}); "
                            f"expected an .npz written by tools.embed") from None
