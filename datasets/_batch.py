"""Batch decoding and cropping on the device (``--decode gpu``).

Loader workers only read the file bytes and draw each image's crop box and flip with the image's
own seed (torchvision's RandomResizedCrop box sampler, so the same distribution, and for the
same seed the same box, as the per-image CPU pipeline). The main process then decodes the whole
batch in one nvJPEG call (``torchvision.io.decode_jpeg(list, device=...)``) and crops, resizes and
flips it as a batch: one ``torchvision.ops.roi_align`` over the per-image boxes, whose adaptive
sampling grid (ceil(box / output) bilinear samples averaged per output pixel) antialiases
downscaling much as the per-image antialiased resize does (not exactly: a box average, where
PIL's and torchvision's antialiased bilinear use a triangle filter). Evaluation's Resize +
CenterCrop is the same box crop with a fixed box; evaluation uses it only with
``--eval_transform batch`` (by default evaluation images take the per-image transform, see
:func:`evaluation_decode` and docs/PARITY.md). Files nvJPEG cannot decode (and non-JPEG files,
decoded by the worker) take the CPU decoder for that image only.

Everything here also runs on the CPU (tests compare it with the per-image pipeline there).
"""
from __future__ import annotations

import io
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.ops import roi_align
from torchvision.transforms import v2

from ._data import DataError, ImageSource, Split
from ._decode import JPEG_MAGIC, decode_bytes, decode_image_tensor, decode_jpeg, read_bytes
from ._transforms import ImageDataset, TransformConfig, build_transform, crop_and_resize_sizes

BATCH_AUGMENTATIONS = ("base", "big")  # RandomResizedCrop + flip: what the batch path implements
DECODE_CHOICES = ("auto", "cpu", "gpu")
# --eval_transform: "published", the per-image Resize + CenterCrop (within one uint8 level of the
# published PIL transform, docs/PARITY.md) on every device; "batch", evaluation follows --decode.
EVAL_TRANSFORMS = ("published", "batch")

# torchvision's box sampler (make_params reads only the input's size; scale/ratio: defaults)
_RANDOM_RESIZED_CROP = v2.RandomResizedCrop(1)


def random_resized_crop_box(height: int, width: int) -> Tuple[int, int, int, int]:
    """(top, left, box_height, box_width) drawn by torchvision's RandomResizedCrop (scale
    0.08-1, ratio 3/4-4/3) from torch's global RNG, exactly as the per-image pipeline draws it."""
    stand_in = torch.empty(1, 1, 1).expand(3, height, width)  # size only, nothing allocated
    box = _RANDOM_RESIZED_CROP.make_params([stand_in])
    return box["top"], box["left"], box["height"], box["width"]


def center_crop_box(height: int, width: int, resize: int, crop: int) -> Tuple[float, ...]:
    """The region of the original image that Resize(resize) + CenterCrop(crop) keeps, as
    (top, left, box_height, box_width) in original pixels (torchvision's size rounding)."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = resize, int(resize * long / short)
    new_height, new_width = (new_short, new_long) if height <= width else (new_long, new_short)
    top = int(round((new_height - crop) / 2.0))
    left = int(round((new_width - crop) / 2.0))
    scale_y, scale_x = height / new_height, width / new_width
    return top * scale_y, left * scale_x, crop * scale_y, crop * scale_x


def batch_resized_crop(images: Sequence[torch.Tensor], boxes: torch.Tensor, size: int,
                       flips: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop each uint8 (3, H_i, W_i) image to its box (top, left, height, width), resize the crop
    to (size, size) and flip it where ``flips``: one roi_align over the padded batch.

    Returns uint8 (B, 3, size, size) on the images' device. Pixel centres follow
    ``interpolate(align_corners=False)`` (roi_align's ``aligned=True``); one replicated row and
    column past each image's edge keep the padding of larger images out of the interpolation.
    """
    device = images[0].device
    height = max(image.shape[1] for image in images) + 1
    width = max(image.shape[2] for image in images) + 1
    batch = torch.empty(len(images), 3, height, width, device=device, dtype=torch.float32)
    for i, image in enumerate(images):  # copies only: no per-image kernel chain
        h, w = image.shape[1:]
        batch[i, :, :h, :w] = image
        batch[i, :, h, :w] = image[:, h - 1]
        batch[i, :, :h + 1, w] = batch[i, :, :h + 1, w - 1]
    boxes = boxes.to(device=device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    rois = torch.stack([torch.arange(len(images), device=device, dtype=torch.float32),
                        left, top, left + box_w, top + box_h], dim=1)
    out = roi_align(batch, rois, output_size=(size, size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    if flips is not None:
        out = torch.where(flips.to(device).view(-1, 1, 1, 1), out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class EncodedBatch(NamedTuple):
    """What the loader hands over in ``--decode gpu`` mode (per image: JPEG bytes, or an already
    decoded uint8 image when ``encoded[i]`` is False)."""

    data: List[torch.Tensor]
    encoded: List[bool]
    boxes: torch.Tensor  # (B, 4) float: top, left, height, width in original pixels
    flips: torch.Tensor  # (B,) bool
    sources: List[str]


def image_size(data: torch.Tensor, source: ImageSource) -> Tuple[int, int]:
    """(height, width) from the JPEG header (PIL reads only the header)."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            width, height = image.size
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"cannot decode image '{source}': {reason}") from None
    return height, width


class EncodedImageDataset(torch.utils.data.Dataset):
    """Items ``((data, is_encoded, box, flip, source), label, index)`` for the batch decoder:
    JPEG files as bytes, other sources decoded here; the box and flip drawn from torch's RNG
    (seeded per image by ``utilities.data.SeededDataset``) for training, fixed for testing."""

    def __init__(self, split: Split, config: TransformConfig, train: bool) -> None:
        if train and config.augmentation not in BATCH_AUGMENTATIONS:
            raise ValueError(f"--decode gpu implements --augmentation "
                             f"{' or '.join(BATCH_AUGMENTATIONS)}, not '{config.augmentation}'; "
                             f"use --decode cpu")
        self.split, self.config, self.train = split, config, train
        self.labels = split.labels
        self.crop, self.resize = crop_and_resize_sizes(config)

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        source = self.split.images[index]
        data, encoded = None, False
        if isinstance(source, str):
            data = read_bytes(source)
            encoded = bytes(data[:3].tolist()) == JPEG_MAGIC
        if encoded:
            height, width = image_size(data, source)
        else:
            data = decode_bytes(data, source) if data is not None else decode_image_tensor(source)
            height, width = data.shape[1:]
        if self.train:
            box = random_resized_crop_box(height, width)
            flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip(0.5)'s draw
        else:
            box, flip = center_crop_box(height, width, self.resize, self.crop), False
        return ((data, encoded, box, flip, str(source) if isinstance(source, str) else ""),
                int(self.labels[index]), index)

    @staticmethod
    def collate_fn(items) -> Tuple[EncodedBatch, torch.Tensor, torch.Tensor]:
        parts, labels, indices = zip(*items)
        data, encoded, boxes, flips, sources = zip(*parts)
        batch = EncodedBatch(list(data), list(encoded), torch.tensor(boxes, dtype=torch.float32),
                             torch.tensor(flips, dtype=torch.bool), list(sources))
        return batch, torch.tensor(labels, dtype=torch.long), torch.tensor(indices)

    def batch_decoder(self, device: torch.device) -> "BatchDecoder":
        return BatchDecoder(self.crop, device)


class BatchDecoder:
    """EncodedBatch -> uint8 (B, 3, crop, crop) on ``device``: one batched JPEG decode, one
    roi_align crop. A batch nvJPEG refuses is retried image by image; an image it still refuses
    is decoded on the CPU (PIL fallback included) and joins the batch."""

    def __init__(self, crop: int, device: torch.device) -> None:
        self.crop, self.device = crop, torch.device(device)
        self.cpu_fallbacks = 0  # images nvJPEG could not decode (for reporting)

    def decode(self, batch: EncodedBatch) -> List[torch.Tensor]:
        images: List[Optional[torch.Tensor]] = [
            None if encoded else data.to(self.device, non_blocking=True)
            for data, encoded in zip(batch.data, batch.encoded)]
        jpeg = [i for i, encoded in enumerate(batch.encoded) if encoded]
        if jpeg:
            try:
                decoded = decode_jpeg([batch.data[i] for i in jpeg], mode=ImageReadMode.RGB,
                                      device=self.device)
            except RuntimeError:
                decoded = [self._decode_one(batch.data[i], batch.sources[i]) for i in jpeg]
            for i, image in zip(jpeg, decoded):
                images[i] = image
        return images

    def _decode_one(self, data: torch.Tensor, source: str) -> torch.Tensor:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            self.cpu_fallbacks += 1
            return decode_bytes(data, source).to(self.device)

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        return batch_resized_crop(self.decode(batch), batch.boxes, self.crop, batch.flips)


class DeviceDecodingLoader:
    """Wraps a DataLoader of EncodedBatch items: yields ``(uint8 images on the device, labels,
    indices)``; ``batch_sampler`` and ``len`` are the wrapped loader's (main.py's resume needs
    them)."""

    def __init__(self, loader: torch.utils.data.DataLoader, decoder: BatchDecoder) -> None:
        self.loader, self.decoder = loader, decoder
        self.batch_sampler = loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch, labels, indices in self.loader:
            yield self.decoder(batch), labels, indices


def nvjpeg_available(device: torch.device) -> bool:
    """True when torchvision decodes JPEGs on ``device`` (a CUDA device with nvJPEG)."""
    if torch.device(device).type != "cuda":
        return False
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="JPEG")
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        decode_jpeg([data], device=device)
    except (RuntimeError, TypeError):
        return False
    return True


def resolve_decode(choice: str, device: torch.device, config: TransformConfig) -> str:
    """'gpu' or 'cpu' for ``--decode``: auto takes gpu on CUDA with nvJPEG when the augmentation
    is one the batch path implements; an explicit gpu that cannot work stops with a message."""
    if choice not in DECODE_CHOICES:
        raise ValueError(f"--decode '{choice}' is not one of {', '.join(DECODE_CHOICES)}")
    if choice == "cpu":
        return "cpu"
    usable = torch.device(device).type == "cuda" and nvjpeg_available(device)
    if choice == "gpu":
        if not usable:
            raise ValueError(f"--decode gpu needs a CUDA device with nvJPEG (torchvision's "
                             f"decode_jpeg on the GPU); the device is {device}. Use --decode cpu")
        if config.augmentation not in BATCH_AUGMENTATIONS:
            raise ValueError(f"--decode gpu implements --augmentation "
                             f"{' or '.join(BATCH_AUGMENTATIONS)}, not '{config.augmentation}'; "
                             f"use --decode cpu")
        return "gpu"
    return "gpu" if usable and config.augmentation in BATCH_AUGMENTATIONS else "cpu"


def evaluation_decode(decode: str, eval_transform: str = "published") -> str:
    """The decode mode of the evaluation sets, from the training's resolved ``decode`` (cpu or
    gpu): cpu (per-image transform, the published one) unless ``--eval_transform batch``."""
    if eval_transform not in EVAL_TRANSFORMS:
        raise ValueError(f"--eval_transform '{eval_transform}' is not one of "
                         f"{', '.join(EVAL_TRANSFORMS)}")
    return decode if eval_transform == "batch" else "cpu"


def device_decoding(loader, dataset: torch.utils.data.Dataset, device: torch.device):
    """``loader`` itself, or, for a dataset of encoded images (``--decode gpu``), a wrapper that
    decodes and crops each batch on ``device`` (see this module)."""
    if not hasattr(dataset, "batch_decoder"):
        return loader
    return DeviceDecodingLoader(loader, dataset.batch_decoder(device))


def image_dataset(split: Split, config: TransformConfig, train: bool,
                  decode: str) -> torch.utils.data.Dataset:
    """A split's dataset for ``--decode`` resolved to cpu (uint8 transforms in the workers) or
    gpu (encoded bytes plus crop boxes, decoded batch-wise on the device)."""
    if decode == "gpu":
        return EncodedImageDataset(split, config, train)
    return ImageDataset(split, build_transform(config, train))
