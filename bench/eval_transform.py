"""Evaluation image transform: ours against the published one, in pixels and in retrieval figures
(issue 24, item 8).

The published test transform is PIL's: decode, ``Resize(256/224 * crop)`` (PIL bilinear, which
widens its filter when it shrinks), ``CenterCrop(crop)``, ``ToTensor``, normalize. Ours has two:

* ``cpu`` (``--decode cpu``): torchvision's JPEG decoder, transforms v2 Resize(antialias=True) +
  CenterCrop on uint8 tensors;
* ``batch`` (``--decode gpu``, run here on the CPU): the same decoder, then one
  ``torchvision.ops.roi_align`` over the centre-crop box (datasets/_batch.py).

Part 1, pixels: mean and maximum absolute difference (0-255 scale, after each path's uint8
rounding; the published float is x 255) on (a) deterministic photo-like JPEGs (smooth colour
fields, hard-edged shapes, fine texture; 240-520 px sides, as CUB/CARS photos are downscaled at
crop 224) and (b) the bundled Omniglot converted to JPEG, at crop 48 (shrunk 105 -> 55) and at
crop 224 (enlarged 105 -> 256). The decoder's own share is reported separately.

Part 2, figures: one ``tinycnn_normalize`` trained with ``main.py`` on the Omniglot JPEG tree
(crop 48, multi-similarity, ``--decode cpu``), its test split embedded with each of the three
transforms, Recall@1/@4 and MAP@R on the faiss backend.

    python bench/eval_transform.py                 # 300 photos, 5 epochs
    python bench/eval_transform.py --photos 100 --epochs 2

Record the printed figures in docs/PARITY.md with the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from bench.omniglot_parity import TREE_NAME, find_zip

PATHS = ("cpu", "batch")
METRICS = ["recall@1", "recall@4", "map@r"]


# ----------------------------------------------------------------------------- inputs
def photo_like(rng: np.random.Generator) -> Image.Image:
    """One deterministic photo-like RGB image: a smooth colour field (low-frequency sinusoids),
    a few hard-edged ellipses and rectangles, and fine texture noise."""
    height, width = (int(v) for v in rng.integers(240, 521, size=2))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for channel in range(3):
        for _ in range(3):
            fy, fx = rng.uniform(0.5, 4, size=2) * 2 * np.pi
            phase = rng.uniform(0, 2 * np.pi)
            image[..., channel] += np.sin(fy * y / height + fx * x / width + phase)
    image = (image - image.min()) / (np.ptp(image) + 1e-6) * 255
    for _ in range(int(rng.integers(3, 9))):
        colour = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(10, height / 3), rng.uniform(10, width / 3)
        if rng.random() < 0.5:
            mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        else:
            mask = (abs(y - cy) < ry) & (abs(x - cx) < rx)
        image[mask] = colour
    image += rng.normal(0, 12, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def write_photos(folder: Path, count: int, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        photo_like(rng).save(path, format="JPEG", quality=90)
        paths.append(str(path))
    return paths


def omniglot_to_jpeg(archive: Path, target: Path) -> Path:
    """The Omniglot zip's PNG glyphs as RGB JPEG files (quality 90) in the same class tree."""
    with zipfile.ZipFile(archive) as bundle:
        for name in bundle.namelist():
            if not name.lower().endswith(".png"):
                continue
            with bundle.open(name) as handle:
                image = Image.open(io.BytesIO(handle.read())).convert("RGB")
            out = target / Path(name).with_suffix(".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out, format="JPEG", quality=90)
    return target / TREE_NAME


# ----------------------------------------------------------------------------- the transforms
def published_pixels(crop: int) -> Callable[[str], torch.Tensor]:
    """Path -> float (3, crop, crop) on 0-255: PIL decode, Resize, CenterCrop, ToTensor x 255."""
    resize = int(round(crop * 256 / 224))
    steps = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                                transforms.ToTensor()])

    def apply(path: str) -> torch.Tensor:
        with Image.open(path) as image:
            return steps(image.convert("RGB")) * 255
    return apply


def our_pixels(path_kind: str, crop: int, decoder: str = "ours") -> Callable[[str], torch.Tensor]:
    """Path -> float (3, crop, crop) on 0-255 from our ``cpu`` or ``batch`` path. ``decoder``
    "pil" feeds them PIL's decoded pixels instead (to separate the decoder's share)."""
    from datasets import TransformConfig, build_transform
    from datasets._decode import decode_image_tensor, pil_to_tensor
    from datasets._batch import batch_resized_crop, center_crop_box

    resize = int(round(crop * 256 / 224))
    test_transform = build_transform(TransformConfig(crop_size=crop), train=False)

    def decode(path: str) -> torch.Tensor:
        if decoder == "pil":
            with Image.open(path) as image:
                return pil_to_tensor(image.convert("RGB"))
        return decode_image_tensor(path)

    def apply(path: str) -> torch.Tensor:
        image = decode(path)
        if path_kind == "cpu":
            return test_transform(image).float()
        box = torch.tensor([center_crop_box(*image.shape[1:], resize, crop)])
        return batch_resized_crop([image], box, crop)[0].float()
    return apply


def pixel_differences(paths: List[str], crop: int) -> Dict[str, Tuple[float, float]]:
    """(mean, max) absolute difference to the published transform, per path and decoder."""
    reference = published_pixels(crop)
    variants = {f"{kind} ({decoder} decoder)": our_pixels(kind, crop, decoder)
                for kind in PATHS for decoder in ("ours", "pil")}
    sums = {name: 0.0 for name in variants}
    peaks = {name: 0.0 for name in variants}
    pixels = 0
    for path in paths:
        expected = reference(path)
        pixels += expected.numel()
        for name, variant in variants.items():
            difference = (variant(path) - expected).abs()
            sums[name] += float(difference.sum())
            peaks[name] = max(peaks[name], float(difference.max()))
    return {name: (sums[name] / pixels, peaks[name]) for name in variants}


# ----------------------------------------------------------------------------- retrieval
def train_model(tree: Path, save_path: Path, epochs: int, seed: int) -> str:
    import main
    argv = ["--dataset", "folder", "--source", str(tree), "--arch", "tinycnn_normalize",
            "--not_pretrained", "--crop_size", "48", "--bs", "112", "--samples_per_class", "2",
            "--lr", "1e-3", "--embed_dim", "128", "--device", "cpu", "--no_train_metrics",
            "--evaluation_metrics", *METRICS, "--storage_metric", "recall@1",
            "--loss", "multisimilarity", "--decode", "cpu", "--kernels", "0",
            "--n_epochs", str(epochs), "--seed", str(seed), "--save_path", str(save_path),
            "--savename", "eval_transform"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main.main(argv)


def retrieval_figures(folder: str) -> Dict[str, Dict[str, float]]:
    """The trained model's test figures with the published, cpu and batch transforms."""
    import datasets
    import evaluation
    from bench.loader_compare import build_pil_transform
    from datasets import ImageDataset
    from datasets._batch import image_dataset
    from tools._trained_model import load_trained_model

    trained = load_trained_model(folder)
    config = trained.model.transform_config(trained.config["crop_size"], "base")
    test = datasets.load("folder", trained.config["source"]).evaluation["test"]
    sets = {"published (PIL)": ImageDataset(test, build_pil_transform(config, train=False)),
            "cpu": image_dataset(test, config, False, "cpu"),
            "batch (roi_align)": image_dataset(test, config, False, "gpu")}
    backend = evaluation.select_backend("faiss", "cpu")
    return {name: evaluation.evaluate(trained.model, dataset, METRICS, "cpu", 128, 0,
                                      backend=backend)
            for name, dataset in sets.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=300, help="Photo-like JPEGs generated.")
    parser.add_argument("--epochs", type=int, default=5, help="Training epochs (0: no part 2).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zip", default=None, help="The Omniglot zip (default: bundled).")
    args = parser.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="eval_transform_") as tmp:
        photos = write_photos(Path(tmp) / "photos", args.photos)
        tree = omniglot_to_jpeg(find_zip(args.zip), Path(tmp) / "omniglot")
        glyphs = sorted(str(p) for p in tree.rglob("*.jpg"))
        print(f"inputs: {len(photos)} photo-like JPEGs, {len(glyphs)} Omniglot JPEGs; torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads")
        cases = [("photo-like, crop 224", photos, 224), ("Omniglot, crop 48", glyphs[::4], 48),
                 ("Omniglot, crop 224", glyphs[::8], 224)]
        print("\n| inputs | path | mean abs diff (0-255) | max abs diff |\n|---|---|---:|---:|")
        for label, paths, crop in cases:
            for name, (mean, peak) in pixel_differences(paths, crop).items():
                print(f"| {label} ({len(paths)} images) | {name} | {mean:.3f} | {peak:.0f} |",
                      flush=True)
        if args.epochs > 0:
            folder = train_model(tree, Path(tmp) / "runs", args.epochs, args.seed)
            print(f"\nmodel: tinycnn_normalize, Omniglot JPEG, crop 48, multisimilarity, "
                  f"{args.epochs} epochs, seed {args.seed}")
            figures = retrieval_figures(folder)
            print("\n| transform | " + " | ".join(METRICS) + " |\n|---|" + "---:|" * len(METRICS))
            for name, values in figures.items():
                print(f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in METRICS) + " |")
            base = figures["published (PIL)"]["recall@1"]
            for name, values in figures.items():
                print(f"R@1 {name} - published: {100 * (values['recall@1'] - base):+.2f} points")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
