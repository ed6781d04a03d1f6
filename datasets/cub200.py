"""CUB-200-2011 (Wah et al. 2011) as published: ``<source>/cub200/images/<NNN.Class_Name>/*.jpg``.

Classes are sorted by folder name (the zero-padded NNN prefix gives the published class order);
the first 100 train and the last 100 test (5,864 / 5,924 images), the usual zero-shot protocol.
A smaller tree is split the same way: first half train, rest test.
"""
from __future__ import annotations

from typing import Optional

from . import REGISTRY
from ._base import DatasetSplits
from ._layout import class_folder_dataset

LAYOUT = "images/<NNN.Class_Name>/*.jpg"


@REGISTRY.register("cub200")
def load_cub200(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    return class_folder_dataset("cub200", source, LAYOUT)
