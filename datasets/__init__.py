"""Datasets, selected with ``--dataset`` and read from ``--source``.

Each member module parses one layout (``parse(source, folder_name) -> DatasetSplits``) and
registers, with :func:`register`, a :class:`Dataset` record of it: the parser and what the rest of
the code reads about the dataset (option defaults, Recall@K list, published size, how to prepare
the publisher's download, a generated miniature); see ``_description.py``. ``REGISTRY.get(name)``
is that record, callable as the parser. :func:`load` adds the optional class re-split, the
integrity checks and the class-disjoint train/validation split.
"""
from __future__ import annotations

from typing import List, Optional

from utilities.registry import Registry

from ._data import DataError, DatasetSplits, QueryGallery, Split
from ._transforms import ImageDataset, InputNormalizer, TransformConfig, build_transform
from ._batch import device_decoding, image_dataset, resolve_decode
from ._class_split import SPLIT_CHOICES, apply_class_split
from ._description import (DEFAULT_RECALL_KS, IMAGE_BENCHMARK, Dataset, Defaults, Published,
                           SmokeWriter)
from ._integrity import check_integrity
from ._split import split_train_validation

REGISTRY: Registry[Dataset] = Registry("dataset", "--dataset")


def register(dataset: Dataset) -> Dataset:
    """Register a member's record under its name (the last statement of its file)."""
    return REGISTRY.register(dataset.name)(dataset)


def described() -> List[Dataset]:
    """Every registered dataset's record, sorted by name."""
    return [REGISTRY.get(name) for name in REGISTRY.names()]


REGISTRY.import_members(__name__, __path__)


def load(name: str, source: Optional[str], use_tv_split: bool = False, tv_split_perc: float = 0.8,
         tv_split_by_samples: bool = False, seed: int = 0,
         folder_name: Optional[str] = None, data_split: str = "default",
         data_split_path: Optional[str] = None, data_split_id: int = 0) -> DatasetSplits:
    """Parse dataset ``name`` under ``source``, optionally re-split its classes by a split file
    (``data_split='ooDML'``, see ``_class_split.py``), refuse evaluation data that would inflate
    the scores (see ``_integrity.py``), and optionally hold out validation classes."""

    if data_split not in SPLIT_CHOICES:
        raise DataError(f"unknown --data_split '{data_split}'; valid names: "
                        f"{', '.join(SPLIT_CHOICES)}")
    parser = REGISTRY.get(name)
    splits = parser(source, folder_name=folder_name)
    if data_split == "ooDML":
        splits = apply_class_split(splits, data_split_path, data_split_id)
    check_integrity(splits, byte_copies=parser.byte_copies_checked)
    if use_tv_split:
        splits = split_train_validation(splits, tv_split_perc, by_samples=tv_split_by_samples,
                                        seed=seed)
    return splits


__all__ = ["REGISTRY", "register", "described", "Dataset", "Defaults", "Published",
           "SmokeWriter", "IMAGE_BENCHMARK", "DEFAULT_RECALL_KS", "load", "DataError",
           "DatasetSplits", "ImageDataset", "QueryGallery", "image_dataset", "device_decoding",
           "Split", "TransformConfig", "build_transform", "InputNormalizer", "resolve_decode"]
