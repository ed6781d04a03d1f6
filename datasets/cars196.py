"""Stanford Cars-196 (Krause et al. 2013) in the class-folder layout of the DML codebases:
``<source>/cars196/images/<class folder>/*.jpg``.

Classes are sorted by folder name; the first 98 train and the last 98 test (8,054 / 8,131
images). A smaller tree is split the same way: first half train, rest test.
"""
from __future__ import annotations

import os
from typing import Optional

from . import REGISTRY
from ._base import DatasetSplits
from ._layout import (dataset_root, flat_class_folders, halve_classes, require_dir,
                      split_from_classes)

LAYOUT = "images/<class folder>/*.jpg"


@REGISTRY.register("cars196")
def load_cars196(source: Optional[str], folder_name: Optional[str] = None) -> DatasetSplits:
    root = dataset_root(source, "cars196", LAYOUT)
    images_dir = require_dir(os.path.join(root, "images"), f"the images folder ({LAYOUT})")
    train, test = halve_classes(flat_class_folders(images_dir), images_dir)
    return DatasetSplits("cars196", split_from_classes(train), {"test": split_from_classes(test)})
