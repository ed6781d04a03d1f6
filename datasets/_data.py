"""What every dataset parser returns: splits of image sources with labels, and the DataError
that names a bad input."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, NamedTuple, Optional, Union

import numpy as np

from utilities.errors import UserError

if TYPE_CHECKING:
    from ._transforms import ImageDataset


class DataError(UserError, RuntimeError):
    """Bad dataset input: the message names the path and what was expected.

    main.py catches it and prints only the message (no stack trace). When raised inside a
    DataLoader worker, PyTorch re-raises it in the main process with the same type, and
    :func:`DataError.short_message` recovers the one-line message from the wrapped text.
    """

    MARKER = "DataError: "

    def __init__(self, message: str) -> None:
        super().__init__(message if self.MARKER in message else self.MARKER + message)

    def short_message(self) -> str:
        """The original one-line message, also when PyTorch wrapped it in a worker traceback."""
        text = str(self)
        tail = text[text.rfind(self.MARKER) + len(self.MARKER):].strip()
        return tail.splitlines()[0] if tail else tail


ImageSource = Union[str, np.ndarray]  # a file path, or an in-memory HxW / HxWxC uint8 array


@dataclass
class Split:
    """One split: image sources with integer labels (0..num_classes-1 within the split)."""

    images: List[ImageSource]
    labels: np.ndarray
    class_names: List[str]
    super_labels: Optional[np.ndarray] = None  # SOP super-classes

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (one per class name)")
        if self.super_labels is not None:
            self.super_labels = np.asarray(self.super_labels, dtype=np.int64).reshape(-1)
            if len(self.super_labels) != len(self.labels):
                raise ValueError("super_labels and labels differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


class QueryGallery(NamedTuple):
    """An evaluation split whose queries are searched among a separate gallery (In-Shop), as
    Splits or as the ImageDatasets made from them; unpacks as ``query, gallery``."""

    query: Union[Split, "ImageDataset"]
    gallery: Union[Split, "ImageDataset"]

    def map(self, function: Callable) -> "QueryGallery":
        """The pair with ``function`` applied to both sides (e.g. Split -> ImageDataset)."""
        return QueryGallery(function(self.query), function(self.gallery))

    def queries_without_gallery(self) -> int:
        """Queries whose class has no gallery image: no model can answer them, so they bound
        every retrieval figure (see datasets/in_shop.py)."""
        return int((~np.isin(self.query.labels, self.gallery.labels)).sum())


@dataclass
class DatasetSplits:
    """A parsed dataset. ``evaluation`` maps a split name to either one Split (each image is a
    query against all others) or a QueryGallery pair (In-Shop)."""

    name: str
    train: Split
    evaluation: Dict[str, Union[Split, QueryGallery]] = field(default_factory=dict)
