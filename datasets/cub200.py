"""CUB-200-2011 (Wah et al. 2011) as published: ``<source>/cub200/images/<NNN.Class_Name>/*.jpg``.

Classes are sorted by folder name (the zero-padded NNN prefix gives the published class order);
the first 100 train and the last 100 test (5,864 / 5,924 images), the usual zero-shot protocol.
A smaller tree is split the same way: first half train, rest test.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from . import register
from ._data import DataError, DatasetSplits
from ._description import Dataset, Published, SmokeWriter
from ._download import (Plan, class_folder_plan, find_dir, has, has_class_folders, listed_path,
                        missing_files, safe_roots)
from ._layout import class_folder_dataset, read_list_file

LAYOUT = "images/<NNN.Class_Name>/*.jpg"


def load_cub200(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    return class_folder_dataset("cub200", source, LAYOUT)


LISTS = ("images.txt", "image_class_labels.txt", "classes.txt")
# Files and folders of CUB_200_2011.tgz besides images/: one of them without the lists means the
# publisher's download, cut short or partly unpacked, never the prepared class-folder layout.
MARKERS = LISTS + ("train_test_split.txt", "bounding_boxes.txt", "attributes", "parts",
                   "attributes.txt")


def read_download(root: str) -> Plan:
    """``CUB_200_2011.tgz`` or its ``CUB_200_2011/`` folder (``images/``, ``images.txt``,
    ``image_class_labels.txt``, ``classes.txt``), or the prepared ``cub200.tar`` of the DAS
    repository (``cub200/images/<class>/``)."""
    plan = Plan()
    home = find_dir(root, lambda f: has(f, *LISTS, "images"))
    if home is None:
        partial = find_dir(root, lambda f: os.path.basename(f) == "CUB_200_2011" or
                           any(os.path.exists(os.path.join(f, m)) for m in MARKERS))
        if partial is not None:
            absent = [name for name in LISTS + ("images",) if not has(partial, name)]
            raise DataError(f"'{partial}' is the publisher's CUB-200-2011 download, but it lacks "
                            f"{', '.join(absent)}; an incomplete download or unpack (expected "
                            f"images/, {', '.join(LISTS)})")
        prepared = find_dir(root, lambda f: os.path.basename(f) == "images" and
                            has_class_folders(f))
        if prepared is not None:
            return class_folder_plan(prepared, plan)
        raise DataError(f"found no CUB-200-2011 files under '{root}'; expected CUB_200_2011.tgz, "
                        f"its CUB_200_2011/ folder (images/, images.txt, image_class_labels.txt, "
                        f"classes.txt) or the prepared cub200.tar (cub200/images/<class>/)")

    def table(name: str) -> Dict[str, str]:
        """``<id> <value>`` rows; the publisher numbers them 1, 2, 3, ... without gaps."""
        path = os.path.join(home, name)
        rows: Dict[str, str] = {}
        for number, fields in read_list_file(path):
            if len(fields) != 2:
                raise DataError(f"'{path}' line {number}: expected '<id> <value>', found "
                                f"'{' '.join(fields)}'")
            if fields[0] != str(len(rows) + 1):
                raise DataError(f"'{path}' line {number}: id '{fields[0]}', expected "
                                f"{len(rows) + 1} (the published ids run 1, 2, 3, ... without "
                                f"gaps or repeats; a damaged or edited file?)")
            rows[fields[0]] = fields[1]
        if not rows:
            raise DataError(f"'{path}' is empty; expected the publisher's list")
        return rows

    classes, images, labels = (table(n) for n in ("classes.txt", "images.txt",
                                                  "image_class_labels.txt"))
    images_file = os.path.join(home, "images.txt")
    labels_file = os.path.join(home, "image_class_labels.txt")
    classes_file = os.path.join(home, "classes.txt")
    for class_id, class_name in classes.items():
        if "/" in class_name or "\\" in class_name or class_name in (".", ".."):
            raise DataError(f"'{classes_file}': class {class_id} is named '{class_name}'; "
                            f"expected a folder name (no '/', not '.' or '..')")
    unlabelled = sorted(set(images) - set(labels), key=int)
    unknown = sorted(set(labels) - set(images), key=int)
    if unlabelled or unknown:
        first = (f"image id {unlabelled[0]} of '{images_file}' has no class in '{labels_file}'"
                 if unlabelled else f"image id {unknown[0]} of '{labels_file}' is not in "
                                    f"'{images_file}'")
        raise DataError(f"{first}; {len(unlabelled) + len(unknown)} image id(s) disagree; "
                        f"expected both files to list the same images")
    roots = safe_roots(root)
    images_dir = os.path.join(home, "images")
    listed = [(rel, listed_path(images_dir, rel, images_file, roots)) for rel in images.values()]
    for image_id, relative in images.items():
        class_id = labels[image_id]
        if class_id not in classes:
            raise DataError(f"'{labels_file}': image id {image_id} has class {class_id}, which "
                            f"'{classes_file}' does not list")
        if relative.split("/")[0] != classes[class_id]:
            raise DataError(f"'{images_file}': image id {image_id} '{relative}' lies outside the "
                            f"folder of its class {class_id} '{classes[class_id]}' in "
                            f"'{labels_file}'; expected the annotation files to agree")
    empty = sorted(set(classes) - set(labels.values()), key=int)
    if empty:
        raise DataError(f"class {empty[0]} '{classes[empty[0]]}' of '{classes_file}' has no "
                        f"image; {len(empty)} class(es) are empty; expected images of every class")
    missing_files(listed, images_file)
    for relative, path in listed:
        plan.add(f"images/{relative}", path, list_file=images_file)
    plan.described = f"CUB-200-2011 '{home}'"
    return plan


def smoke_layout(write: SmokeWriter, classes: int, images_per_class: int) -> None:
    """``images/NNN.Smoke_Bird_NNN/*.jpg``."""
    names = [f"{i + 1:03d}.Smoke_Bird_{i + 1:03d}" for i in range(classes)]
    write.images([images_per_class] * classes,
                 lambda c, i: f"images/{names[c]}/{names[c]}_{i:04d}.jpg")


DATASET = register(Dataset(
    "cub200", load_cub200, published=Published(train=(100, 5864), test=(100, 5924)),
    title="CUB200", aliases=("cub",), folders=("images",), read_download=read_download,
    smoke=smoke_layout))
