"""What the tools commands share: one-line errors, image lists, embedding files."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from architectures import PretrainedWeightsError
from datasets._base import DataError, load_image
from datasets._layout import IMAGE_EXTENSIONS, is_image_name
from evaluation import compute_embeddings
from utilities.checkpoint import CheckpointError
from utilities.errors import UserError
from utilities.registry import UnknownNameError

EMBEDDING_FORMAT = 1  # version of the .npz layout written by tools.embed


class ToolError(UserError, ValueError):
    """Bad input to a tools command; the message names the file, flag or value."""


def run_cli(command: Callable[[], int]) -> int:
    """Run ``command``; known bad input prints one line ``error: ...`` and returns 2."""

    try:
        return command()
    except DataError as error:
        print(f"error: {error.short_message()}", file=sys.stderr)
    except (ToolError, CheckpointError, UnknownNameError, PretrainedWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
    return 2


def choose_device(name: Optional[str]) -> torch.device:
    """``name`` (cpu, cuda, cuda:1), or CUDA when present."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ToolError(f"--device '{name}' is not a device name (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ToolError(f"--device {name} asked for CUDA, but no CUDA device is available")
    return device


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


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

    A folder whose images all lie in subfolders is a class tree: each image's class is its
    folder's path relative to ``source`` (``alphabet/character``), as ``--dataset folder`` reads.
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
        parents = [os.path.relpath(os.path.dirname(p), root) for p in paths]
        if all(parent != "." for parent in parents):
            class_names = sorted(set(parents))
            index = {name: i for i, name in enumerate(class_names)}
            return ImageList(root, paths, np.array([index[p] for p in parents], dtype=np.int64),
                             class_names)
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
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise ToolError(f"--out '{out}': folder '{folder}' does not exist")
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
        target = out if out.endswith(".npz") else out + ".npz"  # np.savez appends it otherwise
        temporary = target[:-4] + ".tmp.npz"
        np.savez(temporary, **arrays)
        os.replace(temporary, target)

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
        if missing or embeddings.ndim != 2 or len(embeddings) != len(arrays["paths"]):
            raise ToolError(f"{what} '{path}' lacks {' and '.join(missing) or 'matching'} "
                            f"'embeddings' (N, D) and 'paths' (N,) arrays; expected an .npz "
                            f"written by tools.embed")
        has_labels = "labels" in arrays and "class_names" in arrays
        return cls(embeddings.astype(np.float32), arrays["paths"],
                   arrays["labels"] if has_labels else None,
                   arrays["class_names"] if has_labels else None,
                   bool(arrays.get("normalized", False)),
                   arrays.get("skipped", np.zeros(0, dtype=str)),
                   arrays.get("skipped_reasons", np.zeros(0, dtype=str)),
                   str(arrays.get("run", "")), str(arrays.get("checkpoint", "")),
                   str(arrays.get("arch", "")))
