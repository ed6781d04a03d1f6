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

from . import REGISTRY
from ._base import DataError, DatasetSplits, QueryGallery, Split
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


@REGISTRY.register("in-shop")
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
