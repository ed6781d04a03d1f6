"""The bundled default: Omniglot's "background small 1" split (Lake et al., Science 2015, MIT
license), shipped unchanged as ``data/omniglot/images_background_small1.zip``.

136 characters of 5 alphabets, 20 drawings each (105 x 105, 1-bit). Classes are the characters
sorted by ``<alphabet>/<characterNN>``; the first 68 train and the other 68 are the unseen test
characters (the CUB/CARS convention). The zip is unpacked once into the user's cache folder
(``$XDG_CACHE_HOME/das_dml``, by default ``~/.cache/das_dml``), in a folder named by the zip's
SHA-256, never inside the repository; later runs read the unpacked files.
``--source`` may name another copy of the zip (or the folder holding it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Optional

from . import register
from ._data import DataError, DatasetSplits
from ._description import Dataset, Defaults, Published
from ._layout import halve_classes, leaf_class_folders, split_from_classes

ZIP_NAME = "images_background_small1.zip"
TREE_NAME = "images_background_small1"
BUNDLED_ZIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "omniglot", ZIP_NAME)


def cache_root() -> str:
    """``$XDG_CACHE_HOME/das_dml`` (``~/.cache/das_dml`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "das_dml")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_zip(source: Optional[str]) -> str:
    """The bundled zip, or the one ``--source`` names (the zip itself or its folder)."""
    if source is None:
        path = BUNDLED_ZIP
        what = "the bundled Omniglot zip (part of the repository; restore it with git checkout)"
    else:
        path = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(path):
            path = os.path.join(path, ZIP_NAME)
        what = f"the Omniglot zip named by --source ({ZIP_NAME})"
    if not os.path.isfile(path):
        raise DataError(f"expected {what} at '{path}', but it does not exist")
    return path


def unpacked_tree(archive: str) -> str:
    """Unpack ``archive`` once into the cache (keyed by its SHA-256) and return the class tree.

    The zip is unpacked into a temporary folder beside the final one and renamed into place, so
    an interrupted or concurrent unpack never leaves a half-filled cache folder behind.
    """
    target = os.path.join(cache_root(), f"omniglot-{_sha256(archive)[:16]}")
    tree = os.path.join(target, TREE_NAME)
    if os.path.isdir(tree):
        return tree
    os.makedirs(cache_root(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".omniglot-", dir=cache_root())
    import zipfile  # only a first unpack reads the zip (``import datasets`` stays light)

    try:
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(staging)  # drops absolute and '..' member paths
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise DataError(f"cannot unpack the Omniglot zip '{archive}' into '{cache_root()}': "
                            f"{error}") from None
        if not os.path.isdir(os.path.join(staging, TREE_NAME)):
            raise DataError(f"the Omniglot zip '{archive}' holds no '{TREE_NAME}/' folder; "
                            f"expected Omniglot's {ZIP_NAME}")
        try:
            os.rename(staging, target)
        except OSError:
            if not os.path.isdir(tree):  # not a concurrent unpack that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree


def load_omniglot(source: Optional[str] = None, folder_name: Optional[str] = None) -> DatasetSplits:
    tree = unpacked_tree(find_zip(source))
    train, test = halve_classes(leaf_class_folders(tree), tree)
    return DatasetSplits("omniglot", split_from_classes(train), {"test": split_from_classes(test)})


DATASET = register(Dataset(
    "omniglot", load_omniglot, title="Omniglot",
    # 105x105 drawings, 68 training characters of 20 drawings: batches of 28 characters x 4;
    # resize-and-crop, as RandomResizedCrop's small crops cut strokes off a character (with it,
    # R@1 stayed at the untrained network's 21%; see docs/PERFORMANCE.md). A small network from
    # scratch on a CPU, evaluated untrained too, so that a first run shows what training did.
    defaults=Defaults(arch="tinycnn_normalize", crop_size=48, n_epochs=8, pretrained=False,
                      lr=1e-3, bs=112, samples_per_class=4, augmentation="red", eval_initial=True),
    published=Published(train=(68, 1360), test=(68, 1360))))
