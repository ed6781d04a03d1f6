"""The uint8 image pipeline: augmentation on uint8 tensors in the loader workers, normalization
on the network's device.

Workers hand over uint8 (3, H, W) crops (4x fewer bytes to pickle and pin than float32) and the
network turns them into its input convention (:class:`InputNormalizer`, ImageNet mean/std or
BN-Inception's BGR 0-255) on its device. The augmentations are those of the PIL reference
pipeline (:func:`datasets._base.build_pil_transform`) in torchvision.transforms.v2, which draws
the same random numbers in the same order (crop box, flip), with antialiased bilinear resizing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ._base import TransformConfig, output_crop, pil_to_tensor


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
