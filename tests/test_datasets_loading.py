"""Loading images: decode failures (also inside a DataLoader worker), colour modes, transforms,
and the train/validation split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from torchvision.transforms import v2

from bench.loader_compare import build_pil_transform
from datasets import (DataError, DatasetSplits, ImageDataset, InputNormalizer, Split,
                      TransformConfig, build_transform)
from datasets._decode import load_image
from datasets._transforms import BGR_255_MEAN, IMAGENET_MEAN, IMAGENET_STD
from datasets._split import split_train_validation

PLAIN = TransformConfig(crop_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def jpeg(path: Path, color=(10, 200, 30), size=(12, 9)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return str(path)


# --------------------------------------------------------------------------- decode failures


def corrupt_files(tmp_path: Path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    truncated = tmp_path / "truncated.jpg"
    full = Path(jpeg(tmp_path / "full.jpg", size=(64, 64))).read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    return [str(garbage), str(truncated)]


def test_corrupt_image_raises_data_error_naming_the_file(tmp_path):
    for bad in corrupt_files(tmp_path):
        dataset = ImageDataset(Split([jpeg(tmp_path / "ok.jpg"), bad], [0, 1], ["a", "b"]),
                               build_transform(PLAIN, train=False))
        image, label, index = dataset[0]
        assert image.shape == (3, 8, 8) and (label, index) == (0, 0)
        with pytest.raises(DataError) as caught:
            dataset[1]
        message = caught.value.short_message()
        assert message.startswith(f"cannot decode image '{bad}'") and "\n" not in message


def test_decode_error_keeps_type_and_message_through_a_worker(tmp_path):
    bad = corrupt_files(tmp_path)[0]
    dataset = ImageDataset(Split([bad], [0], ["a"]), build_transform(PLAIN, train=True))
    with pytest.raises(DataError) as direct:
        dataset[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1)
    with pytest.raises(DataError) as through_worker:
        next(iter(loader))
    assert "worker" in str(through_worker.value)  # PyTorch's wrapped text with the traceback
    assert through_worker.value.short_message() == direct.value.short_message()
    assert through_worker.value.short_message().startswith(f"cannot decode image '{bad}'")


# --------------------------------------------------------------------------- colour modes


def mode_images(tmp_path: Path):
    """Files in the modes real data sets hold; the last two are see-through at pixel (0, 0)."""
    gray = Image.new("L", (10, 10), 90)
    one_bit = Image.new("1", (10, 10), 1)  # Omniglot's PNGs
    palette = Image.new("RGB", (10, 10), (200, 10, 10)).convert("P")
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    palette_transparent = Image.new("P", (10, 10), 0)
    palette_transparent.putpalette([0, 0, 0] * 256)
    palette_transparent.info["transparency"] = 0
    files = {"gray.jpg": gray, "one_bit.png": one_bit, "palette.png": palette,
             "gray_alpha.png": Image.new("LA", (10, 10), (0, 0)), "rgba.png": rgba,
             "palette_transparent.png": palette_transparent}
    paths = []
    for name, image in files.items():
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths


def test_every_colour_mode_yields_three_channels(tmp_path):
    paths = mode_images(tmp_path)
    dataset = ImageDataset(Split(paths, np.arange(len(paths)), [Path(p).stem for p in paths]),
                           build_transform(PLAIN, train=True))
    for index in range(len(paths)):
        image, label, _ = dataset[index]
        assert image.shape == (3, 8, 8) and image.dtype == torch.uint8, paths[index]
    assert load_image(paths[0]).getpixel((0, 0)) == (90, 90, 90)
    assert load_image(paths[1]).getpixel((0, 0)) == (255, 255, 255)
    # Fully transparent pixels become white, not the black their colour values hold.
    for path in paths[3:]:
        assert load_image(path).getpixel((0, 0)) == (255, 255, 255), path
    # In-memory arrays (the digits default) too.
    assert load_image(np.full((4, 4), 7, dtype=np.uint8)).mode == "RGB"


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("crop", [16, 32, 224])
@pytest.mark.parametrize("augmentation", ["base", "adv", "red"])
def test_transform_output_shape_follows_crop_size(crop, augmentation):
    image = Image.new("RGB", (40, 23), (1, 2, 3))  # not square, smaller than the crop
    config = TransformConfig(crop_size=crop, augmentation=augmentation)
    for train in (True, False):
        assert build_transform(config, train)(image).shape == (3, crop, crop)


def test_big_augmentation_crops_256_and_test_resizes_by_256_over_224():
    image = Image.new("RGB", (300, 280))
    assert build_transform(TransformConfig(224, "big"), train=True)(image).shape == (3, 256, 256)
    steps = build_transform(TransformConfig(224), train=False).transforms
    assert isinstance(steps[0], v2.Resize) and list(steps[0].size) == [256]
    assert isinstance(steps[1], v2.CenterCrop) and list(steps[1].size) == [224, 224]
    assert list(build_transform(TransformConfig(112), train=False).transforms[0].size) == [128]
    train_steps = build_transform(TransformConfig(224), train=True).transforms
    assert isinstance(train_steps[0], v2.RandomResizedCrop)
    assert (train_steps[0].scale, train_steps[0].ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    assert train_steps[0].antialias and str(getattr(train_steps[0].interpolation, "value", train_steps[0].interpolation)) == "bilinear"  # noqa: E501
    assert isinstance(train_steps[1], v2.RandomHorizontalFlip) and train_steps[1].p == 0.5
    # the PIL reference pipeline keeps the same choices
    reference = build_pil_transform(TransformConfig(224), train=True).transforms
    assert isinstance(reference[0], transforms.RandomResizedCrop)
    assert (reference[0].scale, reference[0].ratio) == (train_steps[0].scale, train_steps[0].ratio)


def test_imagenet_normalization_versus_bninception_bgr_255():
    rgb = (200, 100, 50)
    image = Image.new("RGB", (30, 30), rgb)
    as_tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    config = TransformConfig(crop_size=16)
    crop = build_transform(config, train=False)(as_tensor)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 16, 16)
    imagenet = InputNormalizer(config.mean, config.std)(crop[None])[0]
    assert torch.allclose(imagenet, build_pil_transform(config, train=False)(image), atol=1e-5)
    expected = [(value / 255 - m) / s for value, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(imagenet[:, 0, 0], torch.tensor(expected), atol=1e-5)

    # BN-Inception: channels reversed to BGR, 0-255 scale, mean subtraction only.
    bgr_config = TransformConfig(crop_size=16, bgr_255=True)
    bgr = InputNormalizer(bgr_config.mean, bgr_config.std, bgr_255=True)(crop[None])[0]
    assert bgr.shape == (3, 16, 16)
    assert torch.allclose(bgr[:, 0, 0], torch.tensor([50 - 104.0, 100 - 117.0, 200 - 128.0]),
                          atol=1e-3)


def test_bgr_255_defaults_match_pretrainedmodels_bninception_settings():
    """Settings are read from the package; no weights are downloaded."""
    pretrainedmodels = pytest.importorskip("pretrainedmodels")  # slow import (~6 s on 2 cores)
    settings = pretrainedmodels.pretrained_settings["bninception"]["imagenet"]
    assert settings["input_space"] == "BGR" and settings["input_range"] == [0, 255]
    config = TransformConfig(bgr_255=True)
    assert list(config.mean) == settings["mean"] == list(BGR_255_MEAN)
    assert list(config.std) == settings["std"]


def test_transform_config_refuses_bad_values():
    with pytest.raises(ValueError, match="--crop_size"):
        TransformConfig(crop_size=0)
    with pytest.raises(ValueError, match="'huge'"):
        TransformConfig(augmentation="huge")


# --------------------------------------------------------------------------- train/val split


def toy_splits(counts, super_labels=True) -> DatasetSplits:
    labels = np.repeat(np.arange(len(counts)), counts)
    train = Split([f"img{i}.jpg" for i in range(len(labels))], labels,
                  [f"class{c}" for c in range(len(counts))],
                  labels % 2 if super_labels else None)
    test = Split(["t0.jpg", "t1.jpg"], [0, 1], ["x", "y"])
    return DatasetSplits("toy", train, {"test": test})


def test_tv_split_by_classes_is_class_disjoint():
    splits = toy_splits([2, 3, 2, 4, 2])
    result = split_train_validation(splits, 0.6)
    train, val = result.train, result.evaluation["val"]
    assert train.class_names == ["class0", "class1", "class2"]
    assert val.class_names == ["class3", "class4"]
    assert not set(train.images) & set(val.images)
    assert len(train) + len(val) == len(splits.train)
    assert train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert val.labels.tolist() == [0] * 4 + [1] * 2
    assert val.super_labels.tolist() == [1] * 4 + [0] * 2  # carried over, not relabelled
    assert result.evaluation["test"] is splits.evaluation["test"]


def test_tv_split_by_samples_keeps_every_class_on_both_sides():
    splits = toy_splits([2, 5, 10])
    result = split_train_validation(splits, 0.8, by_samples=True, seed=3)
    train, val = result.train, result.evaluation["val"]
    assert train.class_names == val.class_names == splits.train.class_names
    # 2 images: 1 + 1 (rounding alone would keep both); 5: 4 + 1; 10: 8 + 2.
    assert np.bincount(train.labels).tolist() == [1, 4, 8]
    assert np.bincount(val.labels).tolist() == [1, 1, 2]
    assert sorted(train.images + val.images) == sorted(splits.train.images)
    original = dict(zip(splits.train.images, splits.train.labels))
    for split in (train, val):
        assert all(original[i] == label for i, label in zip(split.images, split.labels))
    again = split_train_validation(splits, 0.8, by_samples=True, seed=3)
    assert again.evaluation["val"].images == val.images  # seeded
    other = split_train_validation(splits, 0.8, by_samples=True, seed=4)
    assert other.evaluation["val"].images != val.images


def test_tv_split_refusals():
    with pytest.raises(DataError, match="strictly between 0 and 1, got 1.0"):
        split_train_validation(toy_splits([2, 2]), 1.0)
    with pytest.raises(DataError, match="leaves no class .* out of 2 training classes"):
        split_train_validation(toy_splits([2, 2]), 0.9)
    with pytest.raises(DataError, match="class 'class1' has 1 image"):
        split_train_validation(toy_splits([2, 1]), 0.5, by_samples=True)


def test_split_refuses_labels_outside_its_classes():
    with pytest.raises(ValueError, match="0..1"):
        Split(["a", "b"], [0, 2], ["x", "y"])
    with pytest.raises(ValueError, match="differ in length"):
        Split(["a"], [0, 0], ["x"])
