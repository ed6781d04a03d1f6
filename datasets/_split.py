"""Optional train/validation split of the training classes (``--use_tv_split``)."""
from __future__ import annotations

import numpy as np

from ._data import DataError, DatasetSplits, Split


def _subset(split: Split, indices: np.ndarray, class_ids: np.ndarray) -> Split:
    """Rows ``indices`` of ``split``, labels remapped to 0..len(class_ids)-1 in class_ids order."""
    remap = np.full(split.num_classes, -1, dtype=np.int64)
    remap[class_ids] = np.arange(len(class_ids))
    super_labels = None if split.super_labels is None else split.super_labels[indices]
    return Split([split.images[i] for i in indices], remap[split.labels[indices]],
                 [split.class_names[c] for c in class_ids], super_labels)


def split_train_validation(splits: DatasetSplits, train_share: float, by_samples: bool = False,
                           seed: int = 0) -> DatasetSplits:
    """Hold out validation data from the training split.

    By classes (default): the first ``train_share`` of the training classes, in label order,
    stay for training and the rest become a class-disjoint validation split, so that model
    selection never looks at the test classes. By samples: within every class the first
    ``train_share`` of its images (after a seeded shuffle, at least one on each side) train and
    the rest validate; both splits then keep every class and its label.
    """
    if not 0.0 < train_share < 1.0:
        raise DataError(f"--tv_split_perc must lie strictly between 0 and 1, got {train_share}")
    train = splits.train
    if by_samples:
        rng = np.random.default_rng(seed)
        keep, held = [], []
        by_class = np.argsort(train.labels, kind="stable")  # one sort, not a scan per class
        counts = np.bincount(train.labels, minlength=train.num_classes)
        ends = np.cumsum(counts)
        starts = ends - counts
        for c in range(train.num_classes):
            members = rng.permutation(by_class[starts[c]:ends[c]])
            if len(members) < 2:
                raise DataError(f"class '{train.class_names[c]}' has {len(members)} image(s); "
                                f"--tv_split_by_samples needs at least 2 per class")
            # At least one image on each side, so that every class appears in both splits
            # (SOP has many 2-image classes, which a plain rounding would keep whole).
            n_keep = min(len(members) - 1, max(1, int(round(len(members) * train_share))))
            keep.append(members[:n_keep])
            held.append(members[n_keep:])
        classes = np.arange(train.num_classes)
        new_train = _subset(train, np.sort(np.concatenate(keep)), classes)
        validation = _subset(train, np.sort(np.concatenate(held)), classes)
    else:
        n_train_classes = int(round(train.num_classes * train_share))
        if n_train_classes < 1 or n_train_classes >= train.num_classes:
            raise DataError(f"--tv_split_perc {train_share} leaves no class for training or for "
                            f"validation out of {train.num_classes} training classes")
        train_classes = np.arange(n_train_classes)
        val_classes = np.arange(n_train_classes, train.num_classes)
        new_train = _subset(train, np.flatnonzero(train.labels < n_train_classes), train_classes)
        validation = _subset(train, np.flatnonzero(train.labels >= n_train_classes), val_classes)
    evaluation = dict(splits.evaluation)
    evaluation["val"] = validation
    return DatasetSplits(splits.name, new_train, evaluation)
