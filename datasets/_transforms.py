"""The per-image uint8 pipeline: its settings (:class:`TransformConfig`), augmentation on uint8
tensors in the loader workers, the Dataset that decodes and transforms each image, and
normalization on the network's device.

Workers hand over uint8 (3, H, W) crops (4x fewer bytes to pickle and pin than float32) and the
network turns them into its input convention (:class:`InputNormalizer`, ImageNet mean/std or
BN-Inception's BGR 0-255) on its device. The augmentations are those of the PIL reference
pipeline (``build_pil_transform`` in bench/loader_compare.py) in torchvision.transforms.v2, which
draws the same random numbers in the same order (crop box, flip), with antialiased bilinear
resizing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ._data import Split
from ._decode import decode_image_tensor, load_image, pil_to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# BN-Inception's ImageNet convention (pretrainedmodels' settings): BGR, 0-255, mean subtraction
# only.
BGR_255_MEAN = (104.0, 117.0, 128.0)
BGR_255_STD = (1.0, 1.0, 1.0)
AUGMENTATIONS = ("base", "adv", "big", "red")
BIG_CROP = 256  # --augmentation big trains and tests at 256 pixels whatever --crop_size says
INTERPOLATIONS = ("bilinear", "bicubic")


def output_crop(crop_size: int, augmentation: str) -> int:
    """Side of the square images the transforms produce (Revisiting-DML's ``big`` sets 256)."""
    return BIG_CROP if augmentation == "big" else crop_size


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
    interpolation: str = "bilinear"  # of every resize (timm models ask for bicubic)

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = BGR_255_MEAN if self.bgr_255 else IMAGENET_MEAN
        if self.std is None:
            self.std = BGR_255_STD if self.bgr_255 else IMAGENET_STD
        if self.crop_size <= 0:
            raise ValueError(f"--crop_size must be a positive integer, got {self.crop_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"resize interpolation '{self.interpolation}' is not one of "
                             f"{', '.join(INTERPOLATIONS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"--augmentation '{self.augmentation}' is not one of "
                             f"{', '.join(AUGMENTATIONS)}")


def crop_and_resize_sizes(config: TransformConfig):
    """(crop, resize): the output side and the test-time short side (256/224 of the crop)."""
    crop = output_crop(config.crop_size, config.augmentation)
    return crop, int(round(crop * 256 / 224))


class TensorTransform(v2.Compose):
    """A v2 pipeline on uint8 (3, H, W) tensors; ``takes_tensor`` tells ImageDataset to decode
    to a tensor (not to PIL) before calling it."""

    takes_tensor = True

    def __init__(self, steps, config: TransformConfig, train: bool) -> None:
        super().__init__(steps)
        self.config, self.train = config, train

    def forward(self, image):
        """uint8 (3, H, W) tensor (or an RGB PIL image) -> contiguous uint8 (3, crop, crop)."""
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        return super().forward(image).contiguous()  # PIL-decoded images arrive channels-last


def build_transform(config: TransformConfig, train: bool) -> TensorTransform:
    """Paper transforms on uint8 tensors: train RandomResizedCrop + flip; test
    Resize(256/224 * crop) + CenterCrop(crop). Returns uint8; normalize with
    :class:`InputNormalizer` on the device.

    ``augmentation``: base (as above), adv (+ colour jitter), big (crop 256), red (resize then
    random crop, no RandomResizedCrop), following the Revisiting-DML codebase.
    """
    crop, resize = crop_and_resize_sizes(config)
    mode = v2.InterpolationMode(config.interpolation)
    steps = []
    if train:
        if config.augmentation == "red":
            steps += [v2.Resize(resize, interpolation=mode, antialias=True), v2.RandomCrop(crop)]
        else:
            steps += [v2.RandomResizedCrop(crop, interpolation=mode, antialias=True)]
        steps += [v2.RandomHorizontalFlip(0.5)]
        if config.augmentation == "adv":
            steps += [v2.RandomGrayscale(p=0.2), v2.ColorJitter(0.2, 0.2, 0.2, 0.2)]
    else:
        steps += [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(crop)]
    return TensorTransform(steps, config, train)


class InputNormalizer(nn.Module):
    """uint8 (B, 3, H, W) images -> float32 network input in the backbone's convention.

    ImageNet: ``(x / 255 - mean) / std``; BN-Inception (``bgr_255``): channels reversed to BGR
    on a 0-255 scale, ``(x - mean) / std``. Float input is taken as already normalized and
    passed through, so callers may feed either. The constants are non-persistent buffers: they
    follow ``.to(device)`` and stay out of checkpoints.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], bgr_255: bool = False) -> None:
        super().__init__()
        self.bgr_255 = bgr_255
        scale = 1.0 if bgr_255 else 1.0 / 255.0
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        # (x * scale - mean) / std == x * (scale / std) - mean / std: one multiply-add
        self.register_buffer("multiplier", scale / std_t, persistent=False)
        self.register_buffer("offset", -mean_t / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        if self.bgr_255:
            images = images.flip(-3)
        return torch.addcmul(self.offset, images.float(), self.multiplier)


class ImageDataset(torch.utils.data.Dataset):
    """Images of one split with a transform; items are ``(image, label, index)``.

    A transform from :func:`build_transform` (``takes_tensor``) receives the decoded uint8
    (3, H, W) tensor and returns uint8: workers hand over bytes, not floats, and the network
    normalizes on its device (:class:`InputNormalizer`). Any other callable receives an RGB PIL
    image (the PIL reference pipeline of bench/loader_compare.py, ``ToTensor``...).
    """

    def __init__(self, split: Split, transform: Callable) -> None:
        self.split = split
        self.transform = transform
        self.labels = split.labels

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        source = self.split.images[index]
        if getattr(self.transform, "takes_tensor", False):
            image = decode_image_tensor(source)
        else:
            image = load_image(source)
        return self.transform(image), int(self.labels[index]), index
