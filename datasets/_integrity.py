"""Checks that evaluation data cannot inflate the scores (run by :func:`datasets.load`).

Retrieval figures are only meaningful when the test classes are unseen and no image is found as
its own neighbour. A parsed dataset is refused, with one message naming what overlaps, when

- a class name appears in both the training and an evaluation split (not class-disjoint),
- one image file (same path, or a hard or symbolic link to the same file) is in the training
  split and in an evaluation split, twice in one evaluation split, or a query that is also a
  gallery image (In-Shop),
- (datasets that ask for it, ``Dataset.byte_copies_checked``: the user's own trees) two
  byte-identical files in one evaluation split that is searched against itself: each would find
  the other at distance 0.

The published list files are checked line by line in their parsers (duplicated lines, query
rows repeated as gallery rows, ``Ebay_test.txt`` sharing images with ``Ebay_train.txt``), where
the message can name the file and line; this module catches what remains, whatever the parser.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from ._data import DataError, DatasetSplits, QueryGallery, Split

FileKey = Tuple[int, int]  # (st_dev, st_ino): the same file under any name


def _file_keys(images: Sequence) -> Optional[List[FileKey]]:
    """The identity of each image file, or None for in-memory images (the digits set)."""
    if not images or not isinstance(images[0], str):
        return None
    keys = []
    for path in images:
        status = os.stat(path)  # the parsers checked that every file exists
        keys.append((status.st_dev, status.st_ino))
    return keys


def _repeated_within(split: Split, keys: List[FileKey], name: str) -> None:
    first: Dict[FileKey, int] = {}
    repeats = []
    for index, key in enumerate(keys):
        if key in first:
            repeats.append((first[key], index))
        else:
            first[key] = index
    if repeats:
        a, b = repeats[0]
        raise DataError(f"the {name} split holds image '{split.images[b]}' twice (also as "
                        f"'{split.images[a]}'); {len(repeats)} of its {len(keys)} images repeat "
                        f"an earlier one; expected each image once (a repeated image is found as "
                        f"its own neighbour and inflates Recall@K)")


def _digest(path: str, limit: int = -1) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(limit)).digest()


def _byte_copies_within(split: Split, name: str) -> None:
    """Refuse byte-identical files in one split. Only files of equal size are read, first their
    first 4 KiB, then whole where those agree, so distinct photos cost one stat each."""
    groups: Dict[object, List[int]] = defaultdict(list)
    for index, path in enumerate(split.images):
        groups[os.path.getsize(path)].append(index)
    for stage in (4096, -1):
        refined: Dict[object, List[int]] = defaultdict(list)
        for key, members in groups.items():
            if len(members) > 1:
                for index in members:
                    refined[(key, _digest(split.images[index], stage))].append(index)
        groups = refined
    copies = sorted(members for members in groups.values() if len(members) > 1)
    if copies:
        a, b = copies[0][:2]
        extra = sum(len(members) - 1 for members in copies)
        raise DataError(f"the {name} split holds image '{split.images[b]}', a byte-identical copy "
                        f"of '{split.images[a]}'; {extra} of its {len(split.images)} images "
                        f"repeat an earlier one; expected each image once (a repeated image is "
                        f"found as its own neighbour and inflates Recall@K)")


def _shared(a: Split, a_keys: List[FileKey], a_name: str, b: Split, b_keys: List[FileKey],
            b_name: str, why: str) -> None:
    where_a = {key: index for index, key in enumerate(a_keys)}
    shared = [(where_a[key], index) for index, key in enumerate(b_keys) if key in where_a]
    if shared:
        i, j = shared[0]
        same = "" if a.images[i] == b.images[j] else f" (as '{b.images[j]}')"
        raise DataError(f"image '{a.images[i]}' is in both the {a_name} and the {b_name} "
                        f"split{same}; {len(shared)} of the {len(b_keys)} {b_name} images are "
                        f"also {a_name} images; expected {why}")


def check_integrity(splits: DatasetSplits, byte_copies: bool = False) -> None:
    """Refuse evaluation data that overlaps the training data or itself (see module doc);
    ``byte_copies``: also hash the images of an evaluation split searched against itself."""
    train = splits.train
    train_names = set(train.class_names)
    train_keys = _file_keys(train.images)
    for name, evaluation in splits.evaluation.items():
        parts = evaluation if isinstance(evaluation, QueryGallery) else (evaluation,)
        for part in parts:
            overlap = sorted(train_names.intersection(part.class_names))
            if overlap:
                raise DataError(f"class '{overlap[0]}' is in both the training and the {name} "
                                f"split ({len(overlap)} shared class(es)); expected "
                                f"class-disjoint splits (the test classes must be unseen)")
        keys = [_file_keys(part.images) for part in parts]
        labels = [f"{name} query", f"{name} gallery"] if len(parts) == 2 else [name]
        for part, part_keys, label in zip(parts, keys, labels):
            if part_keys is None:
                continue
            _repeated_within(part, part_keys, label)
            if byte_copies and len(parts) == 1:  # searched against itself
                _byte_copies_within(part, label)
            if train_keys is not None:
                _shared(train, train_keys, "training", part, part_keys, label,
                        "class-disjoint splits without shared images")
        if len(parts) == 2 and keys[0] is not None and keys[1] is not None:
            _shared(parts[1], keys[1], labels[1], parts[0], keys[0], labels[0],
                    "queries that are not gallery images (a query finds itself at distance 0)")


def queries_without_gallery(query: Split, gallery: Split) -> Tuple[int, int]:
    """(query images, items) whose item has no gallery image: such a query cannot be answered.

    They are left out of the retrieval averages (as pytorch-metric-learning does); the published
    DAS / Revisiting-DML evaluation divides by every query, i.e. counts them as misses. The
    official In-Shop partition has none.
    """
    import numpy as np  # only the In-Shop check needs it

    lonely = ~np.isin(query.labels, gallery.labels)
    return int(lonely.sum()), int(len(np.unique(query.labels[lonely])))
