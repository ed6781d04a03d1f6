"""Stanford Cars-196 (Krause et al. 2013) in the class-folder layout of the DML codebases:
``<source>/cars196/images/<class folder>/*.jpg``.

Classes are sorted by folder name; the first 98 train and the last 98 test (8,054 / 8,131
images). A smaller tree is split the same way: first half train, rest test.
"""
from __future__ import annotations

from typing import Optional

from . import REGISTRY
from ._base import DatasetSplits
from ._layout import class_folder_dataset

LAYOUT = "images/<class folder>/*.jpg"


@REGISTRY.register("cars196")
def load_cars196(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    return class_folder_dataset("cars196", source, LAYOUT)
