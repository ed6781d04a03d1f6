"""What the training benches share: main.py's options and training objects built as main.py builds
them (random weights), batches kept on the device, one timed call of
``training.loop.train_one_epoch``, generated images and main.py's DataLoader over them, and the
report."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

if TYPE_CHECKING:  # the training stack is imported when a bench runs (see import_main)
    from datasets import Split
    from training.build import Training

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Defaults of the benches, given to main.py's parser before the user's options (which win).
BENCH_DEFAULTS = ["--dataset", "cub200", "--not_pretrained", "--arch", "resnet18_frozen_normalize",
                  "--crop_size", "64", "--bs", "112", "--samples_per_class", "2",
                  "--embed_dim", "512", "--loss", "multisimilarity", "--das_dfs_num_scale", "8",
                  "--kernels", "2", "--log_every", "20"]
DAS_SETTINGS = {"both": [False, True], "on": [True], "off": [False]}


def import_main():
    """main.py's training stack, ``training/`` (deferred until a bench runs; it needs no faiss:
    evaluation imports it only when its faiss backend is used)."""
    from training import build, checks, loop, stops
    return SimpleNamespace(validate_options=checks.validate_options,
                           build_learner=build.build_learner,
                           make_train_loader=build.make_train_loader,
                           train_one_epoch=loop.train_one_epoch, EpochStats=loop.EpochStats,
                           StopRequest=stops.StopRequest)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_progress(enabled: bool = True):
    """train_one_epoch draws a tqdm bar on stderr; keep it out of the bench's report."""
    if not enabled:
        yield
        return
    saved = sys.stderr
    with open(os.devnull, "w") as null:
        sys.stderr = null
        try:
            yield
        finally:
            sys.stderr = saved


# ----------------------------------------------------------------------------- options
def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every training bench takes besides main.py's."""
    add = parser.add_argument
    add("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    add("--num_classes", type=int, default=100, help="Training classes (DAS statistics, proxies).")
    add("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default).")
    add("--seed", type=int, default=0)


def image_size(text: str) -> Tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 500x375, got '{text}'")
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got '{text}'")
    return width, height


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """Options of the benches that time main.py's DataLoader over generated images."""
    add = parser.add_argument
    add("--loader_batches", type=int, default=8,
        help="Batches per epoch of the loader modes (their dataset holds bs x this many images).")
    add("--images", choices=["jpeg", "memory"], default="jpeg",
        help="Loader modes: generated JPEG files, or uint8 arrays in memory (no decoding).")
    add("--image_size", type=image_size, default=(500, 375), help="WIDTHxHEIGHT of the images.")
    add("--unique_images", type=int, default=256,
        help="Distinct generated images (the dataset reuses them in turn).")


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     names: Sequence[str]) -> None:
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")


def bench_options(argv: Sequence[str]) -> argparse.Namespace:
    """main.py's options with the bench's defaults; refuses what main.py refuses."""
    main = import_main()
    from parameters import parse_options

    opt = parse_options(BENCH_DEFAULTS + list(argv))
    main.validate_options(opt)
    return opt


def set_up(args: argparse.Namespace, main_argv: Sequence[str]
           ) -> Tuple[argparse.Namespace, torch.device]:
    """main.py's options and the device of a bench run; refuses a class count too small for a
    batch and a CUDA device that is not there."""
    if args.threads:
        torch.set_num_threads(args.threads)
    opt = bench_options(list(main_argv) + ["--seed", str(args.seed)])
    from utilities.device import choose_device

    try:
        device = choose_device(args.device)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.num_classes * opt.samples_per_class < opt.bs:
        raise SystemExit(f"--num_classes {args.num_classes} x --samples_per_class "
                         f"{opt.samples_per_class} is smaller than --bs {opt.bs}: a batch needs "
                         f"{math.ceil(opt.bs / opt.samples_per_class)} distinct classes")
    torch.manual_seed(args.seed)
    return opt, device


# ----------------------------------------------------------------------------- training as main.py
def random_weight_training(opt: argparse.Namespace, num_classes: int,
                           device: torch.device) -> Training:
    """training.build.build_learner (network, miner, criterion, DAS, SEC, optimizer; random
    weights), DAS always built (a DAS-off step runs without it), and a stand-in sampler
    position."""
    main = import_main()
    with_das = opt.replaced(embedding_producer_used=True)
    training = main.build_learner(with_das, num_classes, device, pretrained=False)
    # what train_one_epoch reads and advances as the position in the epoch
    return dataclasses.replace(training, opt=opt, sampler=SimpleNamespace(start_batch=0))


def class_labels(num_images: int, num_classes: int) -> np.ndarray:
    """Image i belongs to class i mod num_classes (every class gets about the same count)."""
    return np.arange(num_images, dtype=np.int64) % num_classes


def sampled_batches(opt: argparse.Namespace, num_classes: int, count: int) -> List[np.ndarray]:
    """Label arrays of ``count`` batches drawn by the project's --data_sampler."""
    import datasampler

    labels = class_labels(max(opt.bs * count, num_classes * opt.samples_per_class), num_classes)
    sampler = datasampler.select(opt.data_sampler, labels, opt.bs, opt.samples_per_class,
                                 seed=opt.seed)
    return [labels[np.asarray(batch)] for batch, _ in zip(sampler, range(count))]


class DeviceBatches:
    """Stands in for main.py's DataLoader in ``train_one_epoch``: yields ``steps`` batches cycled
    from ``(images, labels)`` already on the device, so no loading and no copy is timed.
    ``on_batch(i)`` is told the index of each batch handed out, then ``"end"``."""

    def __init__(self, batches: List[Tuple[torch.Tensor, torch.Tensor]], steps: int,
                 on_batch: Optional[Callable] = None) -> None:
        self.batches, self.steps, self.on_batch = batches, steps, on_batch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        for step in range(self.steps):
            if self.on_batch is not None:
                self.on_batch(step)
            images, labels = self.batches[step % len(self.batches)]
            yield images, labels, labels
        if self.on_batch is not None:
            self.on_batch("end")


def device_batches(training: Training, count: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random image batches with class-balanced labels, on the device (channels_last on
    CUDA, as train_one_epoch would make them)."""
    opt, device = training.opt, training.device
    generator = torch.Generator().manual_seed(opt.seed)
    batches = []
    for labels in sampled_batches(opt, training.num_classes, count):
        images = torch.randn(opt.bs, 3, opt.crop_size, opt.crop_size, generator=generator)
        images = images.to(device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        batches.append((images, torch.from_numpy(labels).to(device)))
    return batches


def run_epoch(training: Training, loader, use_das: bool, quiet: bool = True) -> float:
    """One call of training.loop.train_one_epoch; returns its wall time (device work finished)."""
    main = import_main()
    sampler = getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None)
    epoch = dataclasses.replace(training, loader=loader, das=training.das if use_das else None,
                                sampler=sampler or training.sampler)
    epoch.sampler.start_batch = 0  # the caller sets a real sampler's epoch
    synchronize(training.device)
    start = time.perf_counter()
    with quiet_progress(quiet):
        main.train_one_epoch(epoch, 1, main.EpochStats(), None, main.StopRequest(), 0)
    synchronize(training.device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- generated images
def write_jpegs(folder: str, count: int, width: int, height: int, seed: int = 0) -> List[str]:
    """``count`` JPEGs (quality 90) of photo-like content: smooth colour fields plus fine noise,
    which compress and decode about like real photos (random noise alone would not)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        path = os.path.join(folder, f"image_{i:05d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def memory_images(count: int, width: int, height: int, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]


def generated_split(args: argparse.Namespace, folder: str, num_images: int) -> Tuple[Split, str]:
    """A training split of ``num_images`` images that reuse ``--unique_images`` generated ones
    (JPEGs written to ``folder``, or in-memory arrays) in turn, and a description of them."""
    from datasets import Split

    width, height = args.image_size
    count = min(args.unique_images, num_images)
    if args.images == "memory":
        sources = memory_images(count, width, height, args.seed)
    else:
        started = time.perf_counter()
        sources = write_jpegs(folder, count, width, height, args.seed)
        size_kb = sum(os.path.getsize(p) for p in sources) / len(sources) / 1024
        print(f"generated {count} JPEGs of {width}x{height} ({size_kb:.0f} KB on average) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    split = Split(images=[sources[i % len(sources)] for i in range(num_images)],
                  labels=class_labels(num_images, args.num_classes),
                  class_names=[f"class_{c}" for c in range(args.num_classes)])
    return split, f"{width}x{height} {'JPEGs' if args.images == 'jpeg' else 'in-memory arrays'}"


def main_dataset(opt: argparse.Namespace, model: torch.nn.Module, split: Split,
                 device: torch.device) -> torch.utils.data.Dataset:
    """main.py's training dataset of ``split`` (--decode resolved as main.py resolves it)."""
    from datasets import image_dataset, resolve_decode

    config = model.transform_config(opt.crop_size, opt.augmentation)
    return image_dataset(split, config, True, resolve_decode(opt.decode, device, config))


def make_loader(opt: argparse.Namespace, train_set: torch.utils.data.Dataset,
                device: torch.device):
    """The training DataLoader exactly as main.main() builds it around ``train_set``
    (``SeededDataset``, the --data_sampler's ``SeededBatches``, --kernels workers)."""
    import datasampler

    split = train_set.split
    sampler = datasampler.select(opt.data_sampler, split.labels, opt.bs, opt.samples_per_class,
                                 seed=opt.seed, class_names=split.class_names)
    return import_main().make_train_loader(train_set, sampler, opt, device)


def epoch_seconds(loader, epoch: int) -> float:
    """Wall time of one pass over ``loader`` (its batches on the device when it decodes there)."""
    loader.batch_sampler.batch_sampler.set_epoch(epoch)
    started = time.perf_counter()
    for images, _, _ in loader:
        pass
    if isinstance(images, torch.Tensor):
        synchronize(images.device)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- report
@dataclass
class Report:
    lines: List[str] = field(default_factory=list)
    summary: Dict[str, str] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)

    def print_summary(self) -> None:
        """The machine-readable last line: ``key=value ...``."""
        print(" ".join(f"{k}={v}" for k, v in self.summary.items()), flush=True)


def throughput(bs: int, steps: int, seconds: Sequence[float]) -> Tuple[float, str]:
    rates = [bs * steps / s for s in seconds]
    return statistics.median(rates), " ".join(f"{r:.1f}" for r in rates)
