"""Alternative class splits read from a file (``--data_split ooDML --data_split_path FILE
--data_split_id N``), as the published DAS code reads the ooDML splits of CARS196 (Milbich et
al., "Characterizing Generalization under Out-Of-Distribution Shifts in Deep Metric Learning",
NeurIPS 2021).

File format: a sequence of splits (a list, or a mapping from split id to split), each split a
mapping with ``"train"`` and ``"test"``: lists of class names, i.e. the class folder names of
the dataset (``datasets`` shows them as ``Split.class_names``). Two encodings are read:

* JSON (``.json``): ``[{"train": ["Acura Integra Type R 2001", ...], "test": [...]}, ...]`` or
  ``{"0": {...}, "1": {...}}``.
* pickle (any other name, e.g. the published ``cars196_ooDML_splits.pkl``): the same structure
  of built-in containers, strings and numbers, possibly numpy arrays of strings. It is read with
  a restricted unpickler that only rebuilds those types, so a file holding any other object
  stops with a message instead of running code.

The classes of the dataset's own train and test splits are pooled, then the file's ``train``
classes (in the file's order) become the training split and its ``test`` classes the test
split. A name that is not a class of the dataset, or that is in both lists, stops the run.
"""
from __future__ import annotations

import io
import json
import pickle
from typing import Dict, List, Sequence

import numpy as np

from ._data import DataError, DatasetSplits, Split

SPLIT_CHOICES = ("default", "ooDML")

# (module, name) pairs the restricted unpickler may rebuild: plain containers and numpy arrays.
_ALLOWED_GLOBALS = {
    ("builtins", name) for name in ("list", "dict", "tuple", "set", "frozenset", "str", "int",
                                    "float", "bool", "bytes", "object")
} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a split file may "
                                         f"only hold lists, dicts, strings and numpy arrays")
        return super().find_class(module, name)


def read_split_file(path: str) -> object:
    """The raw structure of a JSON or pickle split file, read without running code from it."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"--data_split_path '{path}' cannot be read: {error.strerror}") from None
    if path.lower().endswith(".json"):
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"--data_split_path '{path}' is not valid JSON: {error}") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(raw)).load()
    except Exception as error:  # UnpicklingError, EOFError, ... from a foreign or broken file
        raise DataError(f"--data_split_path '{path}' is not a readable split pickle: "
                        f"{error}") from None


def _names(value: object, what: str, path: str) -> List[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"--data_split_path '{path}': {what} must be a list of class names")
    return list(value)


def select_split(data: object, split_id: int, path: str) -> Dict[str, List[str]]:
    """Split ``split_id`` of a file's structure, as ``{"train": [...], "test": [...]}``."""
    if isinstance(data, dict) and not {"train", "test"} <= set(data):
        keyed = {str(k): v for k, v in data.items()}
        if str(split_id) not in keyed:
            raise DataError(f"--data_split_id {split_id} is not in '{path}'; it holds split ids "
                            f"{', '.join(sorted(keyed))}")
        entry = keyed[str(split_id)]
    elif isinstance(data, (list, tuple)):
        if not 0 <= split_id < len(data):
            raise DataError(f"--data_split_id {split_id} is out of range: '{path}' holds "
                            f"{len(data)} split(s), ids 0..{len(data) - 1}")
        entry = data[split_id]
    else:
        raise DataError(f"--data_split_path '{path}' must hold a list of splits or a mapping "
                        f"from split id to split")
    if not isinstance(entry, dict) or not {"train", "test"} <= set(entry):
        raise DataError(f"split {split_id} of '{path}' must be a mapping with 'train' and "
                        f"'test' class-name lists")
    return {key: _names(entry[key], f"split {split_id} '{key}'", path) for key in ("train", "test")}


def _take(pool: Dict[str, tuple], names: Sequence[str]) -> Split:
    images, labels, supers = [], [], []
    for label, name in enumerate(names):
        class_images, class_supers = pool[name]
        images += class_images
        labels += [label] * len(class_images)
        supers += class_supers
    has_super = all(s is not None for s in supers) and supers
    return Split(images, np.asarray(labels, dtype=np.int64), list(names),
                 np.asarray(supers, dtype=np.int64) if has_super else None)


def apply_class_split(splits: DatasetSplits, path: str, split_id: int) -> DatasetSplits:
    """Re-split the pooled train + test classes of ``splits`` by the file's class names."""
    if path is None:
        raise DataError("--data_split ooDML needs --data_split_path FILE (see docs/PARITY.md)")
    test = splits.evaluation.get("test")
    if not isinstance(test, Split) or set(splits.evaluation) != {"test"}:
        raise DataError(f"--data_split ooDML re-splits the classes of a dataset with one test "
                        f"split; '{splits.name}' has {', '.join(splits.evaluation)}")
    chosen = select_split(read_split_file(path), split_id, path)
    pool: Dict[str, tuple] = {}
    for split in (splits.train, test):
        for label, name in enumerate(split.class_names):
            rows = np.flatnonzero(split.labels == label)
            supers = ([None] * len(rows) if split.super_labels is None
                      else split.super_labels[rows].tolist())
            pool[name] = ([split.images[i] for i in rows], supers)
    both = set(chosen["train"]) & set(chosen["test"])
    if both:
        raise DataError(f"split {split_id} of '{path}' lists class '{sorted(both)[0]}' in both "
                        f"train and test")
    for key in ("train", "test"):
        missing = [n for n in chosen[key] if n not in pool]
        if missing:
            raise DataError(f"split {split_id} of '{path}' names {key} class '{missing[0]}', "
                            f"which is not a class of {splits.name} ({len(missing)} unknown)")
    return DatasetSplits(splits.name, _take(pool, chosen["train"]),
                         {"test": _take(pool, chosen["test"])})
