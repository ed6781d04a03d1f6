"""In-Shop Clothes Retrieval (DeepFashion, Liu et al. 2016) as published:
``<source>/in-shop/img/...`` plus ``<source>/in-shop/Eval/list_eval_partition.txt``.

The partition file's first line is the number of images, its second the column names
``image_name item_id evaluation_status``; every further line is one image (``image_name``
relative to ``in-shop/``, e.g. ``img/WOMEN/Dresses/id_00000002/02_1_front.jpg``) with status
train, query or gallery. Every row is kept and the count line must match them (the paper's
published loader drops the first row, and its evaluation then crashes).

Train: 3,997 items / 25,882 images. Evaluation ``{'test': QueryGallery(query, gallery)}``:
14,218 query and 12,612 gallery images; each query is searched among the gallery only. Query
and gallery share one label space (the test items sorted by item_id), so a query's label equals
the label of its item's gallery images.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

from . import register
from ._data import DataError, DatasetSplits, QueryGallery, Split
from ._description import Dataset, Published, SmokeWriter
from ._download import Plan, find_dir, find_file, listed_path, missing_files, safe_roots
from ._integrity import queries_without_gallery
from ._layout import (MIN_CLASSES_PER_SPLIT, check_disjoint_lists, check_listed_images,
                      check_unique_rows, dataset_root, dense_labels, read_list_file,
                      require_classes, require_dir, require_file)

LAYOUT = "img/... plus Eval/list_eval_partition.txt"
HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")


def _read_partition(list_file: str, root: str) -> Dict[str, Dict[str, List]]:
    """Rows per status: image paths, item ids and line numbers, checked against the count line."""
    rows = read_list_file(list_file)
    if not rows or len(rows[0][1]) != 1 or not rows[0][1][0].isdigit():
        found = " ".join(rows[0][1]) if rows else "nothing"
        raise DataError(f"'{list_file}' line {rows[0][0] if rows else 1}: expected the image "
                        f"count (a single integer), found '{found}'")
    count = int(rows[0][1][0])
    if len(rows) < 2 or rows[1][1] != HEADER:
        found = " ".join(rows[1][1]) if len(rows) > 1 else "nothing"
        raise DataError(f"'{list_file}' line {rows[1][0] if len(rows) > 1 else 2}: expected the "
                        f"column names '{' '.join(HEADER)}', found '{found}'")
    parts: Dict[str, Dict[str, List]] = {status: {"paths": [], "items": [], "lines": []}
                                         for status in STATUSES}
    for number, fields in rows[2:]:
        if len(fields) != len(HEADER):
            raise DataError(f"'{list_file}' line {number}: expected {len(HEADER)} fields "
                            f"({' '.join(HEADER)}), found {len(fields)}: '{' '.join(fields)}'")
        name, item, status = fields
        if status not in parts:
            raise DataError(f"'{list_file}' line {number}: evaluation_status '{status}' is not "
                            f"one of {', '.join(STATUSES)}")
        parts[status]["paths"].append(os.path.join(root, name))
        parts[status]["items"].append(item)
        parts[status]["lines"].append(number)
    if count != len(rows) - 2:
        raise DataError(f"'{list_file}' line {rows[0][0]} announces {count} images but "
                        f"{len(rows) - 2} rows follow the column names; expected them to agree "
                        f"(a truncated or edited file?)")
    for other in ("gallery", "train"):
        check_disjoint_lists(parts[other]["paths"], parts[other]["lines"],
                             f"'{list_file}' as {other}", parts["query"]["paths"],
                             parts["query"]["lines"], f"'{list_file}' as query",
                             f"each image under one status (a query that is also a {other} image "
                             f"is found at distance 0 and inflates Recall@K)")
    everything = [(path, line) for status in STATUSES
                  for path, line in zip(parts[status]["paths"], parts[status]["lines"])]
    check_unique_rows([p for p, _ in everything], [n for _, n in everything], list_file)
    for status in STATUSES:
        check_listed_images(parts[status]["paths"], parts[status]["lines"], list_file,
                            os.path.join(root, "img"))
    return parts


def _check_items_disjoint(parts: Dict[str, Dict[str, List]], list_file: str) -> None:
    """No item is both a training item and a query/gallery item (class-disjoint split)."""
    train_lines: Dict[str, int] = {}
    for item, line in zip(parts["train"]["items"], parts["train"]["lines"]):
        train_lines.setdefault(item, line)
    for status in ("query", "gallery"):
        for item, line in zip(parts[status]["items"], parts[status]["lines"]):
            if item in train_lines:
                shared = set(train_lines) & set(parts["query"]["items"] + parts["gallery"]["items"])
                raise DataError(f"'{list_file}' line {line}: item '{item}' is a {status} item and "
                                f"also a train item (line {train_lines[item]}); {len(shared)} "
                                f"item(s) are in both; expected class-disjoint train and "
                                f"query/gallery items")


def load_in_shop(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    root = dataset_root(source, "in-shop", LAYOUT)
    require_dir(os.path.join(root, "img"), "the In-Shop images folder img/")
    list_file = require_file(os.path.join(root, "Eval", "list_eval_partition.txt"),
                             "the In-Shop partition file (count line, column names "
                             f"'{' '.join(HEADER)}', then one row per image)")
    parts = _read_partition(list_file, root)
    _check_items_disjoint(parts, list_file)

    train_labels, train_items = dense_labels(parts["train"]["items"])
    require_classes(len(train_items), MIN_CLASSES_PER_SPLIT, list_file, "train item(s)")
    train = Split(parts["train"]["paths"], train_labels, train_items)

    query, gallery = parts["query"], parts["gallery"]
    for status in ("query", "gallery"):
        if not parts[status]["paths"]:
            raise DataError(f"'{list_file}' lists no {status} images; expected query and "
                            f"gallery rows for evaluation")
    test_labels, test_items = dense_labels(query["items"] + gallery["items"])
    require_classes(len(test_items), MIN_CLASSES_PER_SPLIT, list_file, "query/gallery item(s)")
    n_query = len(query["items"])
    query_split = Split(query["paths"], test_labels[:n_query], test_items)
    gallery_split = Split(gallery["paths"], test_labels[n_query:], list(test_items))
    lonely, lonely_items = queries_without_gallery(query_split, gallery_split)
    if lonely:
        print(f"warning: {lonely} of the {n_query} query images ({lonely_items} item(s)) in "
              f"'{list_file}' have no gallery image of their item; they cannot be answered and "
              f"are reported as test/queries_without_gallery, outside the retrieval averages",
              file=sys.stderr, flush=True)
    return DatasetSplits("in-shop", train, {"test": QueryGallery(query_split, gallery_split)})


def read_download(root: str) -> Plan:
    """``img.zip`` or ``img/`` with ``Eval/list_eval_partition.txt``."""
    plan = Plan()
    partition = find_file(root, "list_eval_partition.txt")
    if partition is None:
        raise DataError(f"found no list_eval_partition.txt under '{root}'; expected In-Shop's "
                        f"Eval/list_eval_partition.txt next to img.zip or img/")
    images_parent = find_dir(root, lambda f: os.path.isdir(os.path.join(f, "img")))
    if images_parent is None:
        raise DataError(f"found no img/ folder (nor img.zip) under '{root}'; expected In-Shop's "
                        f"images next to Eval/list_eval_partition.txt")
    listed = []
    rows = read_list_file(partition)
    if len(rows) < 2 or rows[1][1] != HEADER:
        raise DataError(f"'{partition}' line 2 is not '{' '.join(HEADER)}'; expected the "
                        f"publisher's partition file (count line, column names, rows)")
    roots = safe_roots(root)
    for number, fields in rows[2:]:
        if len(fields) != 3:
            raise DataError(f"'{partition}' line {number}: expected 3 fields (image_name item_id "
                            f"evaluation_status), found {len(fields)}")
        if not fields[0].startswith("img/"):
            raise DataError(f"'{partition}' line {number} names '{fields[0]}'; expected a path "
                            f"inside img/")
        listed.append((fields[0], listed_path(images_parent, fields[0], partition, roots,
                                              number)))
    count = rows[0][1] if rows else []
    if len(count) != 1 or not count[0].isdigit() or int(count[0]) != len(listed):
        raise DataError(f"'{partition}' lists {len(listed)} image(s), but its first line says "
                        f"'{' '.join(count)}'; expected the count line to match the rows (a "
                        f"truncated or edited file?)")
    missing_files(listed, partition)
    for relative, path in listed:
        plan.add(relative, path, list_file=partition)
    plan.add("Eval/list_eval_partition.txt", partition, image=False)
    plan.described = f"In-Shop '{partition}' with '{os.path.join(images_parent, 'img')}'"
    return plan


def smoke_layout(write: SmokeWriter, classes: int, images_per_class: int) -> None:
    """Half the items train; every test item has query and gallery images (alternating)."""
    n_train = (classes + 1) // 2

    def path_of(item: int, i: int) -> str:
        group, category = ("WOMEN", "Dresses") if item % 2 == 0 else ("MEN", "Shirts_Polos")
        return f"img/{group}/{category}/id_{item + 1:08d}/{i + 1:02d}_{i + 1}_front.jpg"

    lines = []
    for item, i, relative in write.images([max(images_per_class, 2)] * classes, path_of):
        status = "train" if item < n_train else ("query" if i % 2 == 0 else "gallery")
        lines.append(f"{relative} id_{item + 1:08d} {status}")
    write.text("Eval/list_eval_partition.txt",
               f"{len(lines)}\n{' '.join(HEADER)}\n" + "\n".join(lines) + "\n")


DATASET = register(Dataset(
    "in-shop", load_in_shop, recall_ks=(1, 10, 100, 1000),
    published=Published(train=(3997, 25882), test=(3985, 26830), class_word="items"),
    title="In-Shop", folders=("img", "Eval"), read_download=read_download, smoke=smoke_layout))
