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
from typing import List, Optional, Tuple

import numpy as np

from . import REGISTRY
from ._base import DataError, DatasetSplits, Split
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


@REGISTRY.register("online_products")
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
