"""What every dataset parser returns, the image dataset shared by all of them, and transforms."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg

from utilities.errors import UserError


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


# torchvision 0.29 announces that torchvision.io's decoders will move to torchcodec; they are the
# fastest JPEG decoder installed here (docs/PERFORMANCE.md), so the notice is silenced.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# BN-Inception's ImageNet convention (pretrainedmodels' settings): BGR, 0-255, mean subtraction
# only.
BGR_255_MEAN = (104.0, 117.0, 128.0)
BGR_255_STD = (1.0, 1.0, 1.0)
AUGMENTATIONS = ("base", "adv", "big", "red")
BIG_CROP = 256  # --augmentation big trains and tests at 256 pixels whatever --crop_size says


def output_crop(crop_size: int, augmentation: str) -> int:
    """Side of the square images the transforms produce (Revisiting-DML's ``big`` sets 256)."""
    return BIG_CROP if augmentation == "big" else crop_size


INTERPOLATIONS = ("bilinear", "bicubic")


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


def _to_bgr_255(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[[2, 1, 0]] * 255.0


def build_pil_transform(config: TransformConfig,
                        train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """The PIL reference pipeline (before uint8 loading): PIL image in, normalized float out.

    Kept as the reference that tests and ``bench/train_step.py --modes loader_compare`` set the
    uint8 pipeline of :func:`build_transform` against; same augmentation choices.
    """
    crop = output_crop(config.crop_size, config.augmentation)
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
    """3-channel RGB; grayscale, 1-bit and palette images are expanded, 16-bit and floating-point
    images are scaled to 0-255 (see :func:`to_8bit`), and transparent images (RGBA, LA, palette
    with transparency) are composited on white rather than on whatever colour their invisible
    pixels happen to hold."""
    image = to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """Single-channel high-bit-depth images as 8-bit grayscale ('L'), scaled, not clipped
    (PIL's own conversion clips them, so 16-bit images turn white).

    16-bit modes ('I;16*') and 32-bit integer images ('I', how PIL opens some 16-bit files) whose
    values lie in 0..65535 are divided by 257 (65535 -> 255); floating-point images ('F') with
    values in [0, 1] are multiplied by 255. Anything else (negative values, floats beyond 1,
    integers beyond 16 bits) is stretched from its own minimum to its maximum.
    """
    mode = image.mode
    if not (mode.startswith("I") or mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I") and low >= 0 and high <= 65535:
        scaled = values / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _decode_error(source: ImageSource, error: Exception) -> DataError:
    if isinstance(error, UnidentifiedImageError):  # its text names a memory address
        reason = "not an image format PIL or torchvision reads"
    else:
        reason = " ".join(str(error).split()) or type(error).__name__  # keep the message one line
    return DataError(f"cannot decode image '{source}': {reason}")


def load_image(source: ImageSource) -> Image.Image:
    """Open an image as 3-channel RGB (see :func:`to_rgb`); a file that fails to decode raises
    a DataError naming it. GIFs (and other animations) give their first frame."""
    if isinstance(source, np.ndarray):
        return to_rgb(Image.fromarray(source))
    try:
        with Image.open(source) as image:
            image.seek(0)
            return to_rgb(image)
    except Exception as error:  # PIL raises many types for corrupt or truncated files
        raise _decode_error(source, error) from None


JPEG_MAGIC = b"\xff\xd8\xff"


def decode_bytes(data: torch.Tensor, source: ImageSource) -> torch.Tensor:
    """uint8 (3, H, W) RGB image from encoded file bytes (a 1-D uint8 tensor).

    JPEGs are decoded by torchvision (libjpeg-turbo, faster than PIL: see docs/PERFORMANCE.md),
    grayscale and CMYK ones converted to RGB by it as PIL would; every other format, and any
    JPEG torchvision refuses, goes through PIL (:func:`load_image`'s conversions).
    """
    if bytes(data[:3].tolist()) == JPEG_MAGIC:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL decides: it reads a few files libjpeg-turbo refuses, or names the error
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            image.seek(0)
            rgb = to_rgb(image)
    except Exception as error:
        raise _decode_error(source, error) from None
    return pil_to_tensor(rgb)


def read_bytes(source: str) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor; a DataError naming it when it cannot be read."""
    try:
        with open(source, "rb") as handle:
            return torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
    except OSError as error:
        raise DataError(f"cannot read image '{source}': {error.strerror}") from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) view of an RGB PIL image (channels-last memory, no copy beyond PIL's)."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def decode_image_tensor(source: ImageSource) -> torch.Tensor:
    """uint8 (3, H, W) RGB tensor of an image source (file path or in-memory array)."""
    if isinstance(source, np.ndarray):
        if source.dtype == np.uint8 and (source.ndim == 2 or (source.ndim == 3 and
                                                              source.shape[2] == 3)):
            array = torch.from_numpy(np.ascontiguousarray(source))
            return array.expand(3, *array.shape) if array.ndim == 2 else array.permute(2, 0, 1)
        return pil_to_tensor(load_image(source))
    return decode_bytes(read_bytes(source), source)


class ImageDataset(torch.utils.data.Dataset):
    """Images of one split with a transform; items are ``(image, label, index)``.

    A transform from :func:`build_transform` (``takes_tensor``) receives the decoded uint8
    (3, H, W) tensor and returns uint8: workers hand over bytes, not floats, and the network
    normalizes on its device (:class:`datasets.InputNormalizer`). Any other callable receives
    an RGB PIL image (the reference pipeline :func:`build_pil_transform`, ``ToTensor``...).
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
