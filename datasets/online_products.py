"""Stanford Online Products (Oh Song et al. 2016) in the layout of the DML codebases:
``<source>/online_products/images/<super_class>_final/*.JPG`` plus
``<source>/online_products/Info_Files/Ebay_train.txt`` and ``Ebay_test.txt``.

Each list file has the header ``image_id class_id super_class_id path`` and one row per image,
``path`` relative to ``images/``. Classes (products) are sorted by published class_id and
relabelled 0..n-1 per split (11,318 train classes / 59,551 images; 11,316 test classes /
60,502 images); ``class_names`` keep the published ids. The 12 super-classes (bicycle, cabinet,
...) are kept as ``super_labels``, relabelled 0..11 in super_class_id order, shared by both splits.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import register
from ._data import DataError, DatasetSplits, Split
from ._description import Dataset, Published, SmokeWriter
from ._download import Plan, find_dir, has, listed_path, missing_files, safe_roots
from ._layout import (MIN_CLASSES_PER_SPLIT, check_disjoint_lists, check_listed_images,
                      check_unique_rows, dataset_root, dense_labels, parse_int, read_list_file,
                      require_classes, require_dir, require_file)

LAYOUT = "images/... plus Info_Files/Ebay_train.txt and Info_Files/Ebay_test.txt"
HEADER = ["image_id", "class_id", "super_class_id", "path"]

# image paths, class ids, super-class ids, line numbers
Rows = Tuple[List[str], np.ndarray, np.ndarray, List[int]]


def _read_ebay_list(list_file: str, images_dir: str) -> Rows:
    rows = read_list_file(list_file)
    if not rows or rows[0][1] != HEADER:
        first = " ".join(rows[0][1]) if rows else "nothing"
        number = rows[0][0] if rows else 1
        raise DataError(f"'{list_file}' line {number}: expected the header "
                        f"'{' '.join(HEADER)}', found '{first}'")
    paths, class_ids, super_ids, numbers = [], [], [], []
    for number, fields in rows[1:]:
        if len(fields) != len(HEADER):
            raise DataError(f"'{list_file}' line {number}: expected {len(HEADER)} fields "
                            f"({' '.join(HEADER)}), found {len(fields)}: '{' '.join(fields)}'")
        parse_int(fields[0], list_file, number, "image_id")
        class_ids.append(parse_int(fields[1], list_file, number, "class_id"))
        super_ids.append(parse_int(fields[2], list_file, number, "super_class_id"))
        paths.append(os.path.join(images_dir, fields[3]))
        numbers.append(number)
    class_ids_arr, super_ids_arr = np.asarray(class_ids), np.asarray(super_ids)
    # A product belongs to exactly one super-class.
    pairs = np.unique(np.stack([class_ids_arr, super_ids_arr], axis=1), axis=0) if paths else \
        np.zeros((0, 2), dtype=np.int64)
    classes, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = int(classes[counts > 1][0])
        raise DataError(f"'{list_file}': class_id {bad} is listed with several super_class_ids; "
                        f"expected one super-class per class")
    check_unique_rows(paths, numbers, list_file)
    check_listed_images(paths, numbers, list_file, images_dir)
    return paths, class_ids_arr, super_ids_arr, numbers


def _check_class_disjoint(lists) -> None:
    """Train and test lists share neither images nor products (the split is class-disjoint)."""
    (train_file, train), (test_file, test) = lists["train"], lists["test"]
    check_disjoint_lists(train[0], train[3], f"'{train_file}'", test[0], test[3], f"'{test_file}'",
                         "disjoint train and test lists (is Ebay_test.txt a copy of "
                         "Ebay_train.txt?)")
    shared = np.intersect1d(train[1], test[1])
    if shared.size:
        class_id = int(shared[0])
        line_a = train[3][int(np.flatnonzero(train[1] == class_id)[0])]
        line_b = test[3][int(np.flatnonzero(test[1] == class_id)[0])]
        raise DataError(f"class_id {class_id} is listed in '{test_file}' (line {line_b}) and in "
                        f"'{train_file}' (line {line_a}); {shared.size} class(es) are in both; "
                        f"expected class-disjoint train and test lists")


def _split(rows: Rows, super_ids: List[int], list_file: str) -> Split:
    paths, class_ids, super_class_ids, _ = rows
    labels, published = dense_labels(class_ids)
    require_classes(len(published), MIN_CLASSES_PER_SPLIT, list_file, "class(es)")
    super_labels = np.searchsorted(np.asarray(super_ids), super_class_ids).astype(np.int64)
    return Split(paths, labels, [str(c) for c in published], super_labels)


def load_online_products(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    root = dataset_root(source, "online_products", LAYOUT)
    images_dir = require_dir(os.path.join(root, "images"), "the images folder of SOP")
    info_dir = require_dir(os.path.join(root, "Info_Files"),
                           "the Info_Files folder with Ebay_train.txt and Ebay_test.txt")
    lists = {}
    for split in ("train", "test"):
        list_file = require_file(os.path.join(info_dir, f"Ebay_{split}.txt"),
                                 f"the SOP {split} list (header '{' '.join(HEADER)}')")
        lists[split] = (list_file, _read_ebay_list(list_file, images_dir))
    _check_class_disjoint(lists)
    super_ids = sorted(set(lists["train"][1][2].tolist()) | set(lists["test"][1][2].tolist()))
    train = _split(lists["train"][1], super_ids, lists["train"][0])
    test = _split(lists["test"][1], super_ids, lists["test"][0])
    return DatasetSplits("online_products", train, {"test": test})


def read_download(root: str) -> Plan:
    """``Stanford_Online_Products.zip`` or its folder (``Ebay_train.txt``, ``Ebay_test.txt``,
    ``<category>_final/``), or the prepared ``online_products.tar``."""
    plan = Plan()
    prepared = find_dir(root, lambda f: has(f, "Info_Files/Ebay_train.txt",
                                            "Info_Files/Ebay_test.txt", "images"))
    if prepared is not None:  # the DAS repository's online_products.tar
        home, images_dir = os.path.join(prepared, "Info_Files"), os.path.join(prepared, "images")
    else:  # Stanford_Online_Products.zip: the lists beside the <category>_final/ folders
        home = images_dir = find_dir(root, lambda f: has(f, "Ebay_train.txt", "Ebay_test.txt"))
        if home is None:
            raise DataError(f"found no Stanford Online Products files under '{root}'; expected "
                            f"Stanford_Online_Products.zip, its folder (Ebay_train.txt, "
                            f"Ebay_test.txt, <category>_final/) or the prepared "
                            f"online_products.tar (images/, Info_Files/)")
    for split in ("train", "test"):
        list_file = os.path.join(home, f"Ebay_{split}.txt")
        rows = read_list_file(list_file)
        if not rows or rows[0][1] != HEADER:
            raise DataError(f"'{list_file}' does not start with the line '{' '.join(HEADER)}'"
                            f"; expected the publisher's list (a damaged or edited file?)")
        listed = []
        roots = safe_roots(root)
        for number, fields in rows[1:]:
            if len(fields) != 4:
                raise DataError(f"'{list_file}' line {number}: expected 4 fields (image_id "
                                f"class_id super_class_id path), found {len(fields)}")
            listed.append((fields[3], listed_path(images_dir, fields[3], list_file, roots,
                                                  number)))
        if not listed:
            raise DataError(f"'{list_file}' lists no images; expected the publisher's list")
        missing_files(listed, list_file)
        for relative, path in listed:
            plan.add(f"images/{relative}", path, list_file=list_file)
        plan.add(f"Info_Files/Ebay_{split}.txt", list_file, image=False)
    plan.described = f"Stanford Online Products '{home}'"
    return plan


SMOKE_SUPER_CLASSES = ("bicycle", "cabinet", "chair")


def smoke_layout(write: SmokeWriter, classes: int, images_per_class: int) -> None:
    """Half the products train, half test, 2.. images each as in SOP; published-style ids
    (class ids 1.., super-class ids 1..)."""
    n_train = (classes + 1) // 2
    supers = len(SMOKE_SUPER_CLASSES)

    def relative(c: int, i: int) -> str:  # as listed: relative to images/
        return f"{SMOKE_SUPER_CLASSES[c % supers]}_final/{1000000 + c + 1}_{i}.JPG"

    counts = [2 + (c % max(images_per_class - 1, 1)) for c in range(classes)]
    written = write.images(counts, lambda c, i: f"images/{relative(c, i)}")
    rows: Dict[str, List[str]] = {"train": [], "test": []}
    for image_id, (c, i, _) in enumerate(written, start=1):
        rows["train" if c < n_train else "test"].append(
            f"{image_id} {c + 1} {c % supers + 1} {relative(c, i)}")
    for split, lines in rows.items():
        write.text(f"Info_Files/Ebay_{split}.txt", "\n".join([" ".join(HEADER)] + lines) + "\n")


DATASET = register(Dataset(
    "online_products", load_online_products, recall_ks=(1, 10, 100, 1000),
    published=Published(train=(11318, 59551), test=(11316, 60502)), title="SOP",
    aliases=("sop",), folders=("images", "Info_Files"), read_download=read_download,
    smoke=smoke_layout))
