"""The training DataLoader of the PIL reference pipeline against main.py's, in images per second.

Old: PIL decode, v1 transforms, float32 normalized in the workers (:func:`build_pil_transform`,
the pipeline before the uint8 loader, kept here as the reference that this comparison and the
tests set the current one against). New: main.py's loader (torchvision.io decode, transforms.v2
on uint8, normalized on the device; with ``--decode gpu`` bytes decoded batch-wise on the
device). Both are built exactly as main.py builds its loader (``SeededDataset``,
``SeededBatches``, ``--kernels`` workers) over the same generated images, and their epochs are
alternated so that a busy machine slows both alike; the medians are compared. The last line ends
with ``loader_imgs_per_s_old=<a> loader_imgs_per_s_new=<b> speedup=<b/a>``.

    python bench/loader_compare.py --crop_size 224 --kernels 2 --loader_batches 4 --repeats 3

Options that are not the bench's own go to main.py's parser (``--arch``, ``--crop_size``,
``--bs``, ``--kernels``, ``--augmentation``, ``--decode``, ...).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from PIL import Image
from torchvision import transforms

from bench import _harness as harness
from datasets import ImageDataset, TransformConfig
from datasets._transforms import crop_and_resize_sizes


def _to_bgr_255(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[[2, 1, 0]] * 255.0


def build_pil_transform(config: TransformConfig,
                        train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """The PIL reference pipeline (before uint8 loading): PIL image in, normalized float out,
    with the augmentation choices of :func:`datasets.build_transform`."""
    crop, resize = crop_and_resize_sizes(config)
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


def compare_loaders(opt: argparse.Namespace, args: argparse.Namespace, device: torch.device,
                    report: harness.Report) -> None:
    """Old against new loader, epochs alternated; the medians go to the report."""
    import architectures

    model = architectures.select(opt.arch, opt.embed_dim, pretrained=False)
    config = model.transform_config(opt.crop_size, opt.augmentation)
    with tempfile.TemporaryDirectory() as folder:
        split, what = harness.generated_split(args, folder, opt.bs * args.loader_batches)
        loaders = {
            "old": harness.make_loader(opt, ImageDataset(split, build_pil_transform(config, True)),
                                       device),
            "main": harness.make_loader(opt, harness.main_dataset(opt, model, split, device),
                                        device)}
        seconds = {name: [] for name in loaders}
        for epoch in range(args.repeats + 1):  # the first epoch starts the workers
            for name, loader in loaders.items():
                elapsed = harness.epoch_seconds(loader, epoch)
                if epoch:
                    seconds[name].append(elapsed)
    # what the new loader leaves to the device: the normalization of a uint8 batch
    normalize = model.input_normalizer.to(device)
    batch = torch.zeros(opt.bs, 3, opt.crop_size, opt.crop_size, dtype=torch.uint8, device=device)
    started = time.perf_counter()
    for _ in range(5):
        normalize(batch)
    harness.synchronize(device)
    normalize_ms = (time.perf_counter() - started) / 5 * 1e3
    rates = {}
    for name, label in (("old", "old: PIL decode + v1 transforms + float32 Normalize in workers"),
                        ("main", "new: torchvision.io decode + v2 on uint8, normalized on device")):
        rates[name], runs = harness.throughput(opt.bs, args.loader_batches, seconds[name])
        report.say(f"DataLoader {label} (--kernels {opt.kernels}, crop {opt.crop_size}, {what}): "
                   f"{rates[name]:.1f} images/s (median of {args.repeats} epochs of "
                   f"{args.loader_batches} batches: {runs})")
    report.say(f"device-side normalization of one uint8 batch ({device}): {normalize_ms:.1f} ms "
               f"(not included above)")
    report.summary["loader_imgs_per_s_old"] = f"{rates['old']:.1f}"
    report.summary["loader_imgs_per_s_new"] = f"{rates['main']:.1f}"
    report.summary["speedup"] = f"{rates['main'] / rates['old']:.2f}"


def main(argv: Optional[Sequence[str]] = None) -> harness.Report:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options go to main.py's parser; bench defaults: "
               + " ".join(harness.BENCH_DEFAULTS))
    harness.add_common_options(parser)
    harness.add_image_options(parser)
    parser.add_argument("--repeats", type=int, default=3,
                        help="Timed epochs of each loader; the median is reported.")
    args, main_argv = parser.parse_known_args(argv)
    harness.require_positive(parser, args, ["repeats", "loader_batches", "unique_images"])
    opt, device = harness.set_up(args, main_argv)
    report = harness.Report()
    report.say(f"device {device}; torch {torch.__version__}; arch {opt.arch}, crop "
               f"{opt.crop_size}, bs {opt.bs}, --augmentation {opt.augmentation}, --decode "
               f"{opt.decode}, --kernels {opt.kernels}")
    compare_loaders(opt, args, device, report)
    report.summary = {"device": device.type, **report.summary}  # the comparison ends the line
    report.print_summary()
    return report


if __name__ == "__main__":
    main()
