"""Stanford Cars-196 (Krause et al. 2013) in the class-folder layout of the DML codebases:
``<source>/cars196/images/<class folder>/*.jpg``.

Classes are sorted by folder name; the first 98 train and the last 98 test (8,054 / 8,131
images). A smaller tree is split the same way: first half train, rest test.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Tuple

import numpy as np

from . import register
from ._data import DataError, DatasetSplits
from ._description import Dataset, Published, SmokeWriter
from ._download import (Plan, class_folder_plan, find_dir, find_file, has_class_folders,
                        listed_path, missing_files, require, safe_roots)
from ._layout import class_folder_dataset

LAYOUT = "images/<class folder>/*.jpg"


def load_cars196(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    return class_folder_dataset("cars196", source, LAYOUT)


def _mat(path: str) -> dict:
    from scipy.io import loadmat  # only the Cars annotations are .mat files

    try:
        return loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for damaged files
        raise DataError(f"cannot read the annotation file '{path}': {error}") from None


def _annotations(path: str, fields: Iterable[str]) -> np.ndarray:
    content = _mat(path)
    if "annotations" not in content:
        raise DataError(f"'{path}' holds no 'annotations' struct; expected the Stanford Cars "
                        f"annotation file")
    records = np.atleast_1d(content["annotations"])
    absent = [name for name in fields if name not in (records.dtype.names or ())]
    if absent:
        raise DataError(f"'{path}': the annotations have no field '{absent[0]}' (fields: "
                        f"{', '.join(records.dtype.names or ())}); expected "
                        f"{', '.join(fields)}")
    return records


def _class_names(path: str) -> List[str]:
    content = _mat(path)
    if "class_names" not in content:
        raise DataError(f"'{path}' holds no 'class_names'; expected the 196 Stanford Cars class "
                        f"names")
    return [str(name) for name in np.atleast_1d(content["class_names"])]


def _cars_folder(class_id: int, names: List[str]) -> str:
    return f"{class_id:03d}." + names[class_id - 1].replace("/", "-")


def _add_cars(plan: Plan, entries: List[Tuple[str, str, int]], names: List[str],
              annotation_file: str) -> None:
    """entries: (listed name, source path, class id) -> images/NNN.<name>/<file>."""
    bad = [(name, c) for name, _, c in entries if not 1 <= c <= len(names)]
    if bad:
        raise DataError(f"'{annotation_file}': '{bad[0][0]}' has class {bad[0][1]}, outside "
                        f"1..{len(names)} of the class names; expected the annotation files to "
                        f"agree")
    missing_files([(name, path) for name, path, _ in entries], annotation_file)
    empty = sorted(set(range(1, len(names) + 1)) - {c for _, _, c in entries})
    if empty:
        raise DataError(f"class {empty[0]} '{names[empty[0] - 1]}' has no image in "
                        f"'{annotation_file}'; {len(empty)} class(es) are empty; expected images "
                        f"of every class")
    for name, path, class_id in entries:
        plan.add(f"images/{_cars_folder(class_id, names)}/{name}", path,
                 list_file=annotation_file)


def read_download(root: str) -> Plan:
    """``car_ims.tgz`` or ``car_ims/`` with ``cars_annos.mat``; or ``cars_train/`` and
    ``cars_test/`` with the devkit's ``cars_meta.mat``, ``cars_train_annos.mat`` and
    ``cars_test_annos_withlabels.mat``; or the prepared ``cars196.tar``. Images are grouped into
    ``images/NNN.<class name>/`` (NNN the published class id, so that sorted folders follow the
    published class order: classes 1-98 train, 99-196 test)."""
    plan = Plan()
    annos = find_file(root, "cars_annos.mat")
    if annos is not None:
        home = os.path.dirname(annos)
        records = _annotations(annos, ("relative_im_path", "class"))
        entries = []
        roots = safe_roots(root)
        ims = None
        for relative, class_id in zip(records["relative_im_path"], records["class"]):
            relative = str(relative)
            path = listed_path(home, relative, annos, roots)
            if not os.path.exists(path):  # car_ims/ unpacked elsewhere under --from
                ims = ims or find_dir(root, lambda f: os.path.basename(f) == "car_ims")
                if ims:
                    path = listed_path(ims, os.path.basename(relative), annos, roots)
            entries.append((os.path.basename(relative), path, int(class_id)))
        _add_cars(plan, entries, _class_names(annos), annos)
        plan.described = f"Stanford Cars '{annos}' with car_ims/"
        return plan
    train_annos = find_file(root, "cars_train_annos.mat")
    if train_annos is not None:
        meta = require(find_file(root, "cars_meta.mat"), "the devkit's cars_meta.mat", root)
        test_annos = find_file(root, "cars_test_annos_withlabels.mat")
        if test_annos is None:
            unlabelled = find_file(root, "cars_test_annos.mat")
            hint = (f" ('{unlabelled}' has no class labels)" if unlabelled else "")
            raise DataError(f"found cars_train_annos.mat but no cars_test_annos_withlabels.mat "
                            f"under '{root}'{hint}; expected the test annotations with labels, "
                            f"published beside the devkit")
        names = _class_names(meta)
        entries = []
        for split, annos_file in (("train", train_annos), ("test", test_annos)):
            images_dir = require(find_dir(root, lambda f: os.path.basename(f) == f"cars_{split}"
                                          and os.path.isdir(f)),
                                 f"the folder cars_{split}/ of cars_{split}.tgz", root)
            records = _annotations(annos_file, ("fname", "class"))
            roots = safe_roots(root)
            entries += [(f"{split}_{fname}",
                         listed_path(images_dir, str(fname), annos_file, roots), int(c))
                        for fname, c in zip(records["fname"], records["class"])]
        _add_cars(plan, entries, names, f"{train_annos}' and '{test_annos}")
        plan.described = f"Stanford Cars devkit '{os.path.dirname(train_annos)}'"
        return plan
    prepared = find_dir(root, lambda f: os.path.basename(f) == "images" and has_class_folders(f))
    if prepared is not None:
        return class_folder_plan(prepared, plan)
    raise DataError(f"found no Stanford Cars files under '{root}'; expected car_ims.tgz or "
                    f"car_ims/ with cars_annos.mat, cars_train/ and cars_test/ with the devkit's "
                    f".mat files, or the prepared cars196.tar (cars196/images/<class>/)")


def smoke_layout(write: SmokeWriter, classes: int, images_per_class: int) -> None:
    """``images/<car name with spaces>/*.jpg``, as the DML codebases' folders (e.g. "Acura RL
    Sedan 2012")."""
    names = [f"Smoke Car Model {i + 1:03d} 20{10 + i % 10}" for i in range(classes)]
    write.images([images_per_class] * classes,
                 lambda c, i: f"images/{names[c]}/{names[c].replace(' ', '_')}_{i:04d}.jpg")


DATASET = register(Dataset(
    "cars196", load_cars196, published=Published(train=(98, 8054), test=(98, 8131)),
    title="CARS196", aliases=("cars",), folders=("images",), read_download=read_download,
    smoke=smoke_layout))
