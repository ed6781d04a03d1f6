"""The uint8 input pipeline: decoding of every accepted format, the v2 transforms against the PIL
reference, the batch box-crop path (--decode gpu, run here on the CPU) against the per-image
path, and torchvision's box statistics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import datasets
from datasets import ImageDataset, InputNormalizer, Split, TransformConfig, build_transform
from bench.loader_compare import build_pil_transform
from datasets._decode import decode_image_tensor, load_image
from datasets._batch import (BatchDecoder, EncodedImageDataset, batch_resized_crop,
                             center_crop_box, random_resized_crop_box, resolve_decode)
from utilities.data import SeededBatches, SeededDataset


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus mild noise: interpolation differences stay small, as on photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    return np.clip(smooth + rng.integers(-4, 5, smooth.shape), 0, 255).astype(np.uint8)


def save_jpeg(path: Path, width: int, height: int, seed: int = 0) -> str:
    Image.fromarray(photo(width, height, seed)).save(path, quality=95)
    return str(path)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- decoding


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp16 = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    Image.fromarray(ramp16).save(tmp_path / "g16.tif")
    ramp_float = np.tile(np.linspace(0, 1, 64), (8, 1)).astype(np.float32)
    Image.fromarray(ramp_float).save(tmp_path / "f32.tif")
    wide_float = ramp_float * 1000 - 300  # beyond [0, 1]: stretched from min to max
    Image.fromarray(wide_float).save(tmp_path / "wide.tif")
    for name in ("g16.png", "g16.tif", "f32.tif", "wide.tif"):
        image = decode_image_tensor(str(tmp_path / name))
        assert image.shape == (3, 8, 64) and image.dtype == torch.uint8, name
        row = image[0, 0].float()
        # a ramp from black to white, not a white (or black) image
        assert row[0] <= 1 and row[-1] >= 254 and abs(float(row[32]) - 127.5) < 6, name
        assert load_image(str(tmp_path / name)).getpixel((63, 0))[0] >= 254, name  # PIL path
    # the exact scale: 16-bit 257 * v -> v
    Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)).save(tmp_path / "v100.png")
    assert decode_image_tensor(str(tmp_path / "v100.png"))[:, 0, 0].tolist() == [100] * 3


def test_gif_is_read_as_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 6), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = decode_image_tensor(str(tmp_path / "anim.gif"))
    assert image.shape == (3, 6, 10)
    red, green, blue = image[:, 3, 5].tolist()
    assert red > 200 and blue < 50


def test_every_accepted_extension_decodes_to_the_same_pixels(tmp_path):
    from datasets._layout import IMAGE_EXTENSIONS

    pixels = photo(20, 12)
    for extension in IMAGE_EXTENSIONS:
        path = tmp_path / f"image{extension}"
        image = Image.fromarray(pixels)
        if extension == ".pgm":
            image = image.convert("L")
        image.save(path, **({"lossless": True} if extension == ".webp" else {}))
        decoded = decode_image_tensor(str(path)).permute(1, 2, 0).numpy().astype(int)
        reference = np.asarray(image.convert("RGB"), dtype=int)
        tolerance = {".jpg": 12, ".jpeg": 12, ".gif": 40}.get(extension, 0)  # lossy / palette
        assert decoded.shape == reference.shape, extension
        assert np.abs(decoded - reference).mean() <= tolerance, extension


def test_jpeg_decoded_by_torchvision_matches_pil(tmp_path):
    path = save_jpeg(tmp_path / "a.jpg", 50, 37)
    fast = decode_image_tensor(path).permute(1, 2, 0).numpy().astype(int)
    reference = np.asarray(load_image(path), dtype=int)
    assert np.abs(fast - reference).max() <= 2


def test_folder_dataset_reads_gifs_and_lists_skipped_files_with_a_count(tmp_path, capsys):
    for split, names in (("train", ("a", "b")), ("test", ("c", "d"))):
        for name in names:
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            shade = ord(name)  # distinct files: train/ and test/ must not share an image
            Image.new("RGB", (8, 8), (9, 9, shade)).save(folder / "one.png")
            Image.new("RGB", (8, 8), (9, shade, 9)).save(folder / "two.gif")
            (folder / "notes.txt").write_text("not an image")
            (folder / ".DS_Store").write_bytes(b"\0")
    splits = datasets.load("folder", str(tmp_path / "tree"))
    assert sum(path.endswith(".gif") for path in splits.train.images) == 2
    err = capsys.readouterr().err
    assert "skipped 4 file(s)" in err and "notes.txt" in err and ".DS_Store" in err


# --------------------------------------------------------------------------- v2 vs PIL reference


def test_uint8_pipeline_draws_the_same_crops_as_the_pil_reference():
    config = TransformConfig(crop_size=64)
    image = photo(200, 150, seed=3)
    new, old = build_transform(config, train=True), build_pil_transform(config, train=True)
    normalize = InputNormalizer(config.mean, config.std)
    for seed in range(8):
        torch.manual_seed(seed)
        crop = new(as_tensor(image))
        torch.manual_seed(seed)
        reference = old(Image.fromarray(image))
        assert crop.dtype == torch.uint8 and crop.shape == (3, 64, 64)
        difference = (normalize(crop[None])[0] - reference).abs() * 255 * 0.226  # in grey levels
        assert difference.mean() < 1.5, seed  # same box and flip; resampling differs slightly


def test_normalizer_passes_float_input_through():
    normalizer = InputNormalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    floats = torch.randn(2, 3, 4, 4)
    assert normalizer(floats) is floats
    ones = normalizer(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(ones, torch.full_like(ones, 2.0))


# --------------------------------------------------------------------------- batch box-crop path


def test_batch_crop_matches_per_image_resized_crop_on_fixed_boxes():
    images = [as_tensor(photo(w, h, seed)) for seed, (w, h) in enumerate(
        [(120, 90), (64, 100), (200, 150), (50, 50)])]
    boxes = torch.tensor([[10, 20, 60, 80], [0, 0, 100, 64], [30, 5, 110, 190], [7, 9, 20, 30]],
                         dtype=torch.float32)  # top, left, height, width
    flips = torch.tensor([False, True, False, True])
    for size in (32, 48):  # downscaling and (last image) upscaling
        batch = batch_resized_crop(images, boxes, size, flips)
        assert batch.shape == (4, 3, size, size) and batch.dtype == torch.uint8
        for image, box, flip, out in zip(images, boxes.int().tolist(), flips, batch):
            reference = F.resized_crop(image, *box, [size, size], antialias=True)
            reference = reference.flip(-1) if flip else reference
            difference = (out.int() - reference.int()).abs()
            assert difference.float().mean() < 1.5 and difference.max() <= 24


def test_center_crop_box_matches_resize_then_center_crop():
    for width, height in ((300, 200), (180, 260), (256, 256)):
        image = as_tensor(photo(width, height, seed=width))
        box = torch.tensor([center_crop_box(height, width, 73, 64)])
        batch = batch_resized_crop([image], box, 64)[0]
        reference = F.center_crop(F.resize(image, [73], antialias=True), [64, 64])
        assert (batch.int() - reference.int()).abs().float().mean() < 1.5


def test_box_sampler_draws_torchvision_boxes():
    """Same seed, same box as v2.RandomResizedCrop; over many seeds, the same area and aspect
    statistics as the (v1) RandomResizedCrop.get_params."""
    stand_in = torch.zeros(3, 375, 500)
    transform = v2.RandomResizedCrop(224)
    ours, theirs = [], []
    for seed in range(1500):
        torch.manual_seed(seed)
        box = random_resized_crop_box(375, 500)
        torch.manual_seed(seed)
        params = transform.make_params([stand_in])
        assert box == (params["top"], params["left"], params["height"], params["width"])
        ours.append(box)
        torch.manual_seed(10_000 + seed)
        from torchvision.transforms import RandomResizedCrop
        theirs.append(RandomResizedCrop.get_params(stand_in, (0.08, 1.0), (3 / 4, 4 / 3)))
    for boxes in (ours, theirs):
        boxes = np.asarray(boxes, dtype=float)
        assert (boxes[:, 0] + boxes[:, 2] <= 375).all() and (boxes[:, 1] + boxes[:, 3] <= 500).all()
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    area = [b[:, 2] * b[:, 3] / (375 * 500) for b in (ours, theirs)]
    aspect = [np.log(b[:, 3] / b[:, 2]) for b in (ours, theirs)]
    assert abs(area[0].mean() - area[1].mean()) < 0.03
    assert abs(aspect[0].mean() - aspect[1].mean()) < 0.03
    assert abs(area[0].std() - area[1].std()) < 0.03


def folder_of_images(tmp_path: Path):
    paths = [save_jpeg(tmp_path / f"{i}.jpg", 90 + 10 * i, 70 + 5 * i, seed=i) for i in range(5)]
    Image.fromarray(photo(60, 80, seed=9)).save(tmp_path / "five.png")  # decoded by the worker
    paths.append(str(tmp_path / "five.png"))
    return Split(paths, np.arange(len(paths)) % 3, ["a", "b", "c"])


@pytest.mark.parametrize("train", [True, False])
def test_batch_decoder_matches_per_image_pipeline_for_the_same_seeds(tmp_path, train):
    split = folder_of_images(tmp_path)
    config = TransformConfig(crop_size=40)
    encoded = SeededDataset(EncodedImageDataset(split, config, train))
    plain = SeededDataset(ImageDataset(split, build_transform(config, train)))
    keys = [(index, 1000 + index) for index in range(len(split))]
    batch, labels, indices = EncodedImageDataset.collate_fn([encoded[key] for key in keys])
    decoded = BatchDecoder(40, "cpu")(batch)
    assert decoded.shape == (len(split), 3, 40, 40) and decoded.dtype == torch.uint8
    assert labels.tolist() == list(split.labels) and indices.tolist() == list(range(len(split)))
    for key, out in zip(keys, decoded):
        reference = plain[key][0]
        assert (out.int() - reference.int()).abs().float().mean() < 2.0, key


def test_batch_decoder_falls_back_to_the_cpu_for_files_nvjpeg_refuses(tmp_path, monkeypatch):
    import datasets._batch as batch_module

    split = folder_of_images(tmp_path)
    dataset = EncodedImageDataset(split, TransformConfig(crop_size=24), train=False)
    batch = EncodedImageDataset.collate_fn([dataset[i] for i in range(len(split))])[0]
    expected = BatchDecoder(24, "cpu")(batch)
    real = batch_module.decode_jpeg

    def picky(data, **kwargs):  # refuses lists, and the second file
        if isinstance(data, list) or torch.equal(data, batch.data[1]):
            raise RuntimeError("nvJPEG cannot decode this")
        return real(data, **kwargs)

    monkeypatch.setattr(batch_module, "decode_jpeg", picky)
    decoder = BatchDecoder(24, "cpu")
    assert torch.equal(decoder(batch), expected)
    assert decoder.cpu_fallbacks == 1


def test_encoded_loader_batches_do_not_depend_on_worker_count(tmp_path):
    import datasampler

    split = folder_of_images(tmp_path)
    dataset = EncodedImageDataset(split, TransformConfig(crop_size=16), train=True)
    outputs = []
    for workers in (0, 1):
        sampler = datasampler.select("random", split.labels, 3, 1, seed=0)
        loader = torch.utils.data.DataLoader(
            SeededDataset(dataset), batch_sampler=SeededBatches(sampler, seed=5),
            num_workers=workers, collate_fn=EncodedImageDataset.collate_fn)
        outputs.append([BatchDecoder(16, "cpu")(batch) for batch, _, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(*outputs)) and len(outputs[0]) == 2


def test_decode_choice_on_the_cpu():
    config = TransformConfig(crop_size=16)
    assert resolve_decode("auto", torch.device("cpu"), config) == "cpu"
    assert resolve_decode("cpu", torch.device("cpu"), config) == "cpu"
    with pytest.raises(ValueError, match="--decode gpu needs a CUDA device"):
        resolve_decode("gpu", torch.device("cpu"), config)
    with pytest.raises(ValueError, match="--augmentation"):
        EncodedImageDataset(Split([], [], []), TransformConfig(16, "adv"), train=True)
