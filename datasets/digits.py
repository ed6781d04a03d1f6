"""The built-in default: scikit-learn's bundled 8x8 handwritten digits (no download).

Classes 0-4 train, 5-9 test, so retrieval is evaluated on unseen classes as in CUB/CARS.
Images are upscaled from 8x8 (values 0-16) to 32x32 uint8 grayscale.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from . import register
from ._data import DatasetSplits, Split
from ._description import Dataset, Defaults, Published

UPSCALED_SIZE = 32


def _digit_images(data: np.ndarray) -> list:
    images = []
    for flat in data:
        small = Image.fromarray((flat.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8))
        images.append(np.asarray(small.resize((UPSCALED_SIZE, UPSCALED_SIZE), Image.BILINEAR)))
    return images


def load_digits(source: Optional[str] = None, folder_name: Optional[str] = None) -> DatasetSplits:
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, this dataset only

    bunch = sklearn_digits()
    images = _digit_images(bunch.data)
    labels = bunch.target.astype(np.int64)
    train_idx = np.flatnonzero(labels < 5)
    test_idx = np.flatnonzero(labels >= 5)
    train = Split([images[i] for i in train_idx], labels[train_idx], [str(c) for c in range(5)])
    test = Split([images[i] for i in test_idx], labels[test_idx] - 5,
                 [str(c) for c in range(5, 10)])
    return DatasetSplits(name="digits", train=train, evaluation={"test": test})


DATASET = register(Dataset(
    "digits", load_digits,
    # 8x8 images and 5 training classes: a small CNN from scratch, batches holding all 5 classes
    # with 20 images each, and no RandomResizedCrop (its 8%-area crops erase a digit).
    defaults=Defaults(arch="tinycnn_normalize", crop_size=32, n_epochs=12, pretrained=False,
                      lr=1e-3, bs=100, samples_per_class=20, augmentation="red",
                      eval_initial=True),
    published=Published(train=(5, 901), test=(5, 896))))
