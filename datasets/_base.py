"""What every dataset parser returns, the image dataset shared by all of them, and transforms."""
from __future__ import annotations

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


@dataclass
class DatasetSplits:
    """A parsed dataset. ``evaluation`` maps a split name to either one Split (each image is a
    query against all others) or a (query, gallery) pair (In-Shop)."""

    name: str
    train: Split
    evaluation: Dict[str, Union[Split, Tuple[Split, Split]]] = field(default_factory=dict)
    validation: Optional[Split] = None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# BN-Inception's ImageNet convention (pretrainedmodels' settings): BGR, 0-255, mean subtraction
# only.
BGR_255_MEAN = (104.0, 117.0, 128.0)
BGR_255_STD = (1.0, 1.0, 1.0)
AUGMENTATIONS = ("base", "adv", "big", "red")


@dataclass
class TransformConfig:
    """Input convention of a backbone plus the augmentation choice.

    ``mean``/``std`` left as None take the convention's values: ImageNet's on a 0-1 RGB scale,
    or BN-Inception's BGR 0-255 mean with std 1 when ``bgr_255`` is set.
    """

    crop_size: int = 224
    augmentation: str = "base"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    bgr_255: bool = False  # BN-Inception: BGR channel order on a 0-255 scale

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = BGR_255_MEAN if self.bgr_255 else IMAGENET_MEAN
        if self.std is None:
            self.std = BGR_255_STD if self.bgr_255 else IMAGENET_STD
        if self.crop_size <= 0:
            raise ValueError(f"--crop_size must be a positive integer, got {self.crop_size}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"--augmentation '{self.augmentation}' is not one of "
                             f"{', '.join(AUGMENTATIONS)}")


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


def to_rgb(image: Image.Image) -> Image.Image:
    """3-channel RGB; grayscale, 1-bit and palette images are expanded, and transparent images
    (RGBA, LA, palette with transparency) are composited on white rather than on whatever colour
    their invisible pixels happen to hold."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource) -> Image.Image:
    """Open an image as 3-channel RGB (see :func:`to_rgb`); a file that fails to decode raises
    a DataError naming it."""
    if isinstance(source, np.ndarray):
        return to_rgb(Image.fromarray(source))
    try:
        with Image.open(source) as image:
            return to_rgb(image)
    except Exception as error:  # PIL raises many types for corrupt or truncated files
        reason = " ".join(str(error).split()) or type(error).__name__  # keep the message one line
        raise DataError(f"cannot decode image '{source}': {reason}") from None


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
