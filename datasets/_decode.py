"""Pixel decoding: an image source (file path or in-memory array) to 3-channel RGB, as a PIL
image or a uint8 (3, H, W) tensor, with a DataError naming any file that fails."""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torchvision.io
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode

from ._data import DataError, ImageSource

JPEG_MAGIC = b"\xff\xd8\xff"


def decode_jpeg(data, **options):
    """torchvision.io.decode_jpeg (one tensor or a list) without the notice, on every call, that
    torchvision's decoders move to TorchCodec: not installed here, and they are the fastest JPEG
    decoder that is (docs/PERFORMANCE.md)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities "
                                "of TorchVision are deprecated", category=DeprecationWarning)
        return torchvision.io.decode_jpeg(data, **options)


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
