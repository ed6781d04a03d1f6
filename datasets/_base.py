"""What every dataset parser returns, the image dataset shared by all of them, and transforms."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


class DataError(RuntimeError):
    """Bad dataset input: the message names the path and what was expected.

    main.py catches it and prints only the message (no stack trace). When raised inside a
    DataLoader worker, PyTorch re-raises it in the main process with the same type, and
    :func:`DataError.short_message` recovers the one-line message from the wrapped text.
    """

    MARKER = "DataError: "

    def __init__(self, message: str) -> None:
        super().__init__(message if self.MARKER in message else self.MARKER + message)

    def short_message(self) -> str:
        text = str(self)
        return text[text.rfind(self.MARKER) + len(self.MARKER):].strip()


ImageSource = Union[str, np.ndarray]  # a file path, or an in-memory HxW / HxWxC uint8 array


@dataclass
class Split:
    """One split: image sources with integer labels (0..num_classes-1 within the split)."""

    images: List[ImageSource]
    labels: np.ndarray
    class_names: List[str]
    super_labels: Optional[np.ndarray] = None  # SOP super-classes

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DatasetSplits:
    """A parsed dataset. ``evaluation`` maps a split name to either one Split (each image is a
    query against all others) or a (query, gallery) pair (In-Shop)."""

    name: str
    train: Split
    evaluation: Dict[str, Union[Split, Tuple[Split, Split]]] = field(default_factory=dict)
    validation: Optional[Split] = None


@dataclass
class TransformConfig:
    """Input convention of a backbone plus the augmentation choice."""

    crop_size: int = 224
    augmentation: str = "base"
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    bgr_255: bool = False  # BN-Inception: BGR channel order on a 0-255 scale


def _to_bgr_255(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[[2, 1, 0]] * 255.0


def build_transform(config: TransformConfig, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """Paper transforms: train RandomResizedCrop + flip; test Resize(256/224 * crop) + CenterCrop.

    ``augmentation``: base (as above), adv (+ colour jitter), big (crop 256), red (resize then
    random crop, no RandomResizedCrop), following the Revisiting-DML codebase.
    """
    crop = 256 if config.augmentation == "big" else config.crop_size
    resize = int(round(crop * 256 / 224))
    steps: List[Callable] = []
    if train:
        if config.augmentation == "red":
            steps += [transforms.Resize(resize), transforms.RandomCrop(crop)]
        else:
            steps += [transforms.RandomResizedCrop(crop)]
        steps += [transforms.RandomHorizontalFlip(0.5)]
        if config.augmentation == "adv":
            steps += [transforms.RandomGrayscale(p=0.2),
                      transforms.ColorJitter(0.2, 0.2, 0.2, 0.2)]
    else:
        steps += [transforms.Resize(resize), transforms.CenterCrop(crop)]
    steps += [transforms.ToTensor()]
    if config.bgr_255:
        steps += [transforms.Lambda(_to_bgr_255)]
    steps += [transforms.Normalize(mean=list(config.mean), std=list(config.std))]
    return transforms.Compose(steps)


def load_image(source: ImageSource) -> Image.Image:
    """Open an image as 3-channel RGB; grayscale and palette images are converted."""
    if isinstance(source, np.ndarray):
        return Image.fromarray(source).convert("RGB")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises many types for corrupt or truncated files
        raise DataError(f"cannot decode image '{source}': {error}") from None


class ImageDataset(torch.utils.data.Dataset):
    """Images of one split with a transform; items are ``(image, label, index)``."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.split = split
        self.transform = transform
        self.labels = split.labels

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        image = load_image(self.split.images[index])
        return self.transform(image), int(self.labels[index]), index


def require_path(path: str, what: str) -> str:
    """Stop with a message naming ``path`` when it does not exist."""
    if not os.path.exists(path):
        raise DataError(f"expected {what} at '{path}', but it does not exist")
    return path
