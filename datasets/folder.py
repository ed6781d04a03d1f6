"""Any image tree whose leaf folders are classes, e.g. ``<alphabet>/<character>/*.png``.

The tree is ``--source`` itself, or ``<source>/<folder_name>`` with ``--folder_name``. Classes
are named by their path relative to the tree and sorted component by component; the first half
train (the larger half for an odd count) and the rest test, the CUB/CARS convention. When the
tree holds ``train/`` and ``test/`` subfolders, each is read as its own class tree instead; the
two must then be class-disjoint (no class path in both) and share no image file, not even a
byte-identical copy under another name, since a test image seen in training inflates the scores.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from . import register
from ._data import DataError, DatasetSplits
from ._description import Dataset
from ._layout import (MIN_CLASSES_PER_SPLIT, ClassImages, halve_classes, leaf_class_folders,
                      require_classes, require_dir, split_from_classes, visible_entries)

LAYOUT = "one leaf folder of images per class, or train/ and test/ class trees"
EXPLICIT = ("train", "test")


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def refuse_shared_images(train: List[ClassImages], test: List[ClassImages], tree: str) -> None:
    """Refuse train/ and test/ trees that share a class path or hold byte-identical files.

    Only files whose size occurs on both sides are hashed, so distinct photo collections cost
    one stat per file.
    """
    shared_classes = sorted({name for name, _ in train} & {name for name, _ in test})
    if shared_classes:
        raise DataError(f"'{tree}': class folder '{shared_classes[0]}' is in both train/ and "
                        f"test/ ({len(shared_classes)} shared class folder(s)); expected "
                        f"class-disjoint train/ and test/ trees")
    by_size: Dict[int, Tuple[List[str], List[str]]] = defaultdict(lambda: ([], []))
    for side, classes in enumerate((train, test)):
        for _, paths in classes:
            for path in paths:
                by_size[os.path.getsize(path)][side].append(path)
    copies = []
    for train_paths, test_paths in by_size.values():
        if train_paths and test_paths:
            digests = {_digest(path): path for path in train_paths}
            copies += [(digests[d], path) for path in test_paths for d in [_digest(path)]
                       if d in digests]
    if copies:
        first_train, first_test = copies[0]
        n_test = sum(len(paths) for _, paths in test)
        raise DataError(f"'{tree}': test image '{first_test}' is a copy of training image "
                        f"'{first_train}'; {len(copies)} of the {n_test} test images are copies "
                        f"of training images; expected train/ and test/ to share no image")


def load_folder(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    if source is None:
        raise DataError(f"--dataset folder needs --source: the image tree ({LAYOUT}), or its "
                        f"parent with --folder_name")
    source = os.path.abspath(os.path.expanduser(source))
    if folder_name:
        require_dir(source, f"the --source folder holding '{folder_name}/'")
        tree = require_dir(os.path.join(source, folder_name),
                           f"the image tree named by --folder_name ({LAYOUT})")
    else:
        tree = require_dir(source, f"the image tree ({LAYOUT})")

    top = [e.name for e in visible_entries(tree) if e.is_dir()]
    if any(name in EXPLICIT for name in top):
        missing = [name for name in EXPLICIT if name not in top]
        if missing:
            raise DataError(f"'{tree}' holds {'/'.join(n for n in EXPLICIT if n in top)}/ but no "
                            f"{missing[0]}/; expected both train/ and test/ class trees, or a "
                            f"tree of class folders without them")
        extra = [name for name in top if name not in EXPLICIT]
        if extra:
            raise DataError(f"'{tree}' holds train/ and test/ and also '{extra[0]}/'; expected "
                            f"only train/ and test/ (use --use_tv_split for a validation split)")
        train, test = (leaf_class_folders(os.path.join(tree, name)) for name in EXPLICIT)
        for name, classes in zip(EXPLICIT, (train, test)):
            require_classes(len(classes), MIN_CLASSES_PER_SPLIT, os.path.join(tree, name),
                            "class folder(s)")
        refuse_shared_images(train, test, tree)
    else:
        train, test = halve_classes(leaf_class_folders(tree), tree)
    return DatasetSplits("folder", split_from_classes(train), {"test": split_from_classes(test)})


# the image benchmarks' defaults; a user's own tree is checked for byte-identical test images
DATASET = register(Dataset("folder", load_folder, byte_copies_checked=True))
