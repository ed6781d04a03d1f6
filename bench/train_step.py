"""Images per second of full training steps, with and without DAS, and where the step's time goes.

Every step runs through ``main.train_one_epoch`` with the objects ``main.main`` builds
(``architectures.select``, ``batchminer.select``, ``criteria.select``, ``build_producer``,
``main.make_optimizer``; channels_last on CUDA, bf16 autocast with ``--amp``; ``--compile``), so
the figures are those of the code users run. Modes (``--modes``, any of):

* ``step``: batches generated once and kept on the device, fed to ``train_one_epoch`` by a stand-in
  loader: data loading excluded.
* ``step_loader``: ``train_one_epoch`` fed by main.py's DataLoader (``SeededDataset(ImageDataset)``,
  ``SeededBatches``, the training transform, ``--kernels`` workers, pinned memory on CUDA,
  persistent workers) over generated images: data loading included.
* ``loader``: that DataLoader alone (images per second it delivers), to set against the step.
* ``loader_compare``: the DataLoader of the PIL reference pipeline (PIL decode, v1 transforms,
  float32 normalized in the workers) against main.py's (torchvision.io decode, transforms.v2 on
  uint8, normalized on the device; or with ``--decode gpu`` bytes decoded batch-wise on the
  device), epochs alternated; the line ends with
  ``loader_imgs_per_s_old=<a> loader_imgs_per_s_new=<b> speedup=<b/a>``.

Images are JPEGs of ``--image_size`` (default 500x375, about a CUB/SOP photo) written to a
temporary folder, or with ``--images memory`` uint8 arrays held by the dataset (no decoding).

Share of DAS, mining and the loss: ``step`` also runs a measurement pass of ``--breakdown_steps``
steps through the same ``train_one_epoch`` with hooks that call ``torch.cuda.synchronize`` (on CUDA)
and ``time.perf_counter`` at the boundaries of the step's parts: backbone forward (forward hooks of
the network), DAS forward (hooks of the DAS module), mining (a timing wrapper around the criterion's
miner), loss forward (hooks of the criterion, mining subtracted), DAS + loss backward (until the
gradient of the embeddings is ready: a tensor hook), backbone backward (until the optimizer's
pre-step hook), optimizer step (its post-step hook). The share is (DAS + mining + loss forward +
their backward) / the whole step, start of one step to the start of the next, median per step.
The throughput passes run without those hooks. DAS's full cost also shows as the ratio of the
DAS-off and DAS-on throughputs.

``--check_syncs`` runs a few steps watching for host syncs: on CUDA with
``torch.cuda.set_sync_debug_mode("warn")``, on CPU with :class:`SyncWatch`, which flags the calls
that synchronize on CUDA (``.item()``, ``nonzero``, boolean-mask indexing,
``torch.tensor(..., device=)`` ...) and names their file, function and line.

    python bench/train_step.py                                   # CPU: resnet18, 64 crop, bs 112
    python bench/train_step.py --modes loader --crop_size 224 --kernels 2
    python bench/train_step.py --device cuda --arch resnet50_double_frozen_normalize --crop_size 224

Options that are not the bench's own go to main.py's parser (``--arch``, ``--crop_size``, ``--bs``,
``--samples_per_class``, ``--embed_dim``, ``--loss``, ``--batch_mining``, ``--kernels``,
``--das_*``, ``--compile``, ...). The last line is a machine-readable summary:
``imgs_per_s=<DAS on, data on device> das_mining_loss_share=<DAS on> ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:  # main is imported by import_main (see there)
    from main import Training
from torch.overrides import TorchFunctionMode  # noqa: E402

# Defaults of the bench, given to main.py's parser before the user's options (which win).
BENCH_DEFAULTS = ["--dataset", "cub200", "--not_pretrained", "--arch", "resnet18_frozen_normalize",
                  "--crop_size", "64", "--bs", "112", "--samples_per_class", "2",
                  "--embed_dim", "512", "--loss", "multisimilarity", "--das_dfs_num_scale", "8",
                  "--kernels", "2", "--log_every", "20"]
MODES = ("step", "step_loader", "loader", "loader_compare")
PHASES = ("backbone_forward", "das_forward", "mining", "loss_forward", "das_loss_backward",
          "backbone_backward", "optimizer", "other")
HEAD_PHASES = ("das_forward", "mining", "loss_forward", "das_loss_backward")


def import_main():
    """``import main`` (deferred until a mode runs; main.py needs no faiss: evaluation imports it
    only when its faiss backend is used)."""
    import main
    return main


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


# ----------------------------------------------------------------------------- set-up as main.py
def bench_options(argv: Sequence[str]) -> argparse.Namespace:
    """main.py's options with the bench's defaults; refuses what main.py refuses."""
    main = import_main()
    from parameters import parse_options

    opt = parse_options(BENCH_DEFAULTS + list(argv))
    main.validate_options(opt)
    return opt


def build_training(opt: argparse.Namespace, num_classes: int, device: torch.device):
    """main.build_learner (network, miner, criterion, DAS, SEC, optimizer; random weights), DAS
    always built (a DAS-off step runs without it), and a stand-in sampler position."""
    main = import_main()
    with_das = argparse.Namespace(**dict(vars(opt), embedding_producer_used=True))
    training = main.build_learner(with_das, num_classes, device, pretrained=False)
    # what main.train_one_epoch reads and advances as the position in the epoch
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
    """One call of main.train_one_epoch; returns its wall time (device work finished)."""
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


# ----------------------------------------------------------------------------- breakdown
class TimedMiner:
    """Wraps a criterion's miner: times each call (synchronizing first) and passes everything else
    (``stats``, ``registry_name``) through."""

    def __init__(self, miner, clock: "PhaseClock") -> None:
        self._miner, self._clock = miner, clock

    def __call__(self, *args, **kwargs):
        self._clock.mark("mining_start")
        result = self._miner(*args, **kwargs)
        self._clock.mark("mining_end")
        return result

    def __getattr__(self, name):
        return getattr(self._miner, name)


# (mark before, mark after) -> the phase the time between them belongs to; other pairs: "other".
INTERVALS = {
    ("step_start", "backbone_end"): "backbone_forward",
    ("das_start", "das_end"): "das_forward",
    ("criterion_start", "mining_start"): "loss_forward",
    ("mining_start", "mining_end"): "mining",
    ("mining_end", "criterion_end"): "loss_forward",
    ("criterion_start", "criterion_end"): "loss_forward",
    ("criterion_end", "embedding_grad"): "das_loss_backward",
    ("embedding_grad", "optimizer_start"): "backbone_backward",
    ("optimizer_start", "optimizer_end"): "optimizer",
}


class PhaseClock:
    """Time marks (synchronized with the device) set by hooks on the real training step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: List[Tuple[str, float]] = []

    def mark(self, name: str) -> None:
        synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def steps(self) -> List[Dict[str, float]]:
        """Seconds per phase for each complete step (start of a step to the start of the next)."""
        starts = [i for i, (name, _) in enumerate(self.marks) if name == "step_start"]
        result = []
        for first, last in zip(starts, starts[1:]):
            phases = dict.fromkeys(PHASES, 0.0)
            marks = self.marks[first:last + 1]
            for (before, t0), (after, t1) in zip(marks, marks[1:]):
                phases[INTERVALS.get((before, after), "other")] += t1 - t0
            result.append(phases)
        return result


@contextlib.contextmanager
def step_hooks(training: Training, clock: PhaseClock):
    """Hooks that mark the boundaries of the step's parts (see the module docstring)."""
    handles = []
    model = training.train_model

    def forward_done(module, inputs, output):
        clock.mark("backbone_end")
        if output.requires_grad:
            output.register_hook(lambda grad: clock.mark("embedding_grad"))

    handles.append(model.register_forward_pre_hook(lambda module, inputs: clock.mark("step_start")))
    handles.append(model.register_forward_hook(forward_done))
    for module, name in ((training.das, "das"), (training.criterion, "criterion")):
        handles.append(module.register_forward_pre_hook(
            lambda m, i, name=name: clock.mark(f"{name}_start")))
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=name: clock.mark(f"{name}_end")))
    handles.append(training.optimizer.register_step_pre_hook(
        lambda *a: clock.mark("optimizer_start")))
    handles.append(training.optimizer.register_step_post_hook(
        lambda *a: clock.mark("optimizer_end")))
    miner = getattr(training.criterion, "miner", None)
    if miner is not None:
        training.criterion.miner = TimedMiner(miner, clock)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if miner is not None:
            training.criterion.miner = miner


def breakdown(training: Training, loader, use_das: bool) -> Dict[str, float]:
    """Median seconds per phase over the steps of one measured train_one_epoch call; ``step`` is
    the median whole step."""
    clock = PhaseClock(training.device)
    with step_hooks(training, clock):
        run_epoch(training, loader, use_das)
    steps = clock.steps()
    if not steps:
        raise SystemExit("--breakdown_steps must be at least 2 (a step is timed to the next one)")
    result = {phase: statistics.median(s[phase] for s in steps) for phase in PHASES}
    result["step"] = statistics.median(sum(s.values()) for s in steps)
    result["head_share"] = statistics.median(
        sum(s[p] for p in HEAD_PHASES) / sum(s.values()) for s in steps)
    result["das_forward_share"] = statistics.median(
        s["das_forward"] / sum(s.values()) for s in steps)
    return result


def format_breakdown(parts: Dict[str, float]) -> str:
    step = sum(parts[p] for p in PHASES)
    return "  ".join(f"{p} {parts[p] * 1e3:.1f} ms ({100 * parts[p] / step:.1f}%)" for p in PHASES)


# ----------------------------------------------------------------------------- host-sync watch
# Calls that make the host wait for the device on CUDA (torch.cuda.set_sync_debug_mode flags them;
# pytorch/pytorch#62092, #120996). On CPU nothing waits, so SyncWatch flags them by name.
SYNCING_CALLS = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
    "__format__", "__array__", "nonzero", "argwhere", "masked_select", "unique",
    "unique_consecutive", "_unique2", "bincount", "histc", "multinomial", "randperm", "equal",
    "allclose"})


def _is_mask(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_is_mask(i) for i in index)
    return False


def syncs_on_cuda(func, args, kwargs) -> Optional[str]:
    """The name under which ``func(*args, **kwargs)`` is reported, when it syncs on CUDA."""
    name = getattr(func, "__name__", str(func))
    if name in SYNCING_CALLS:
        return name
    if name in ("__getitem__", "__setitem__", "index_put", "index_put_") and len(args) > 1 \
            and _is_mask(args[1]):
        return f"{name}[bool mask]"
    if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
        return f"{name}(device=...)"  # a copy from pageable host memory (pytorch#120996)
    if name == "where" and len(args) == 1 and not kwargs:
        return "where(condition)"
    if name == "repeat_interleave" and "output_size" not in kwargs and \
            isinstance(kwargs.get("repeats", args[1] if len(args) > 1 else None), torch.Tensor):
        return "repeat_interleave(tensor repeats)"
    return None


@dataclass
class SyncEvent:
    call: str
    file: str  # relative to the repository
    function: str
    line: int
    step: object  # batch index, or "end" after the last batch, or None before the first

    def site(self) -> Tuple[str, str, str]:
        return (self.file, self.function, self.call)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function}) {self.call} at step {self.step}"


# Sites that sync only on CPU, by design: on CUDA the same code takes another branch.
CPU_ONLY_SITES = {
    ("das/sampling.py", "_check_inputs"):
        "label range check; on CUDA torch._assert_async, no sync",
}

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OPTIM_DIR = os.path.join(_TORCH_DIR, "optim") + os.sep
_THIS_FILE = os.path.abspath(__file__)


class SyncWatch(TorchFunctionMode):
    """Records every call that would synchronize with the host on CUDA, with the repository file,
    function and line that made it and the training step (``self.step``) it fell in.

    Ignored: calls made by torch.optim itself (Adam reads its step counters, CPU tensors unless
    ``capturable``, with ``.item()``; that never waits for the GPU) and this module's own calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: List[SyncEvent] = []
        self.step: object = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = syncs_on_cuda(func, args, kwargs)
        if call is not None:
            self._record(call)
        return func(*args, **kwargs)

    def _record(self, call: str) -> None:
        frame = sys._getframe(2)
        if frame.f_code.co_filename.startswith(_OPTIM_DIR):
            return
        while frame is not None:
            filename = os.path.abspath(frame.f_code.co_filename)
            if filename.startswith(REPO_ROOT + os.sep) and not filename.startswith(_TORCH_DIR):
                if filename == _THIS_FILE:
                    return
                self.events.append(SyncEvent(call, os.path.relpath(filename, REPO_ROOT),
                                             frame.f_code.co_name, frame.f_lineno, self.step))
                return
            frame = frame.f_back


def sync_check(training: Training, batches, steps: int, use_das: bool) -> List[str]:
    """Run ``steps`` steps of train_one_epoch watching for host syncs; one line per call site.

    On CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` (every real sync, with the Python line
    that caused it). On CPU: :class:`SyncWatch` (calls known to sync on CUDA). A site is "at the
    logging point only" when all its calls fall in steps where ``global_step % --log_every == 0``
    or after the last batch."""
    opt = training.opt
    on_cuda = training.device.type == "cuda"
    watch = None if on_cuda else SyncWatch()
    caught: List[warnings.WarningMessage] = []
    boundaries: List[Tuple[int, object]] = []  # (number of warnings so far, step starting now)

    def on_batch(step):
        if watch is not None:
            watch.step = step
        boundaries.append((len(caught), step))

    loader = DeviceBatches(batches, steps, on_batch)
    found: List[Tuple[str, object]] = []
    if watch is not None:
        if use_das:  # emulate the accelerator's DAS bank write (CPU takes a compact path)
            training.das.sync_free_bank_writes = True
        try:
            with watch:
                run_epoch(training, loader, use_das)
        finally:
            training.das.sync_free_bank_writes = None
        found = [(f"{e.file}:{e.line} ({e.function}) {e.call}"
                  + (f" [CPU-only branch: {CPU_ONLY_SITES[e.site()[:2]]}]"
                     if e.site()[:2] in CPU_ONLY_SITES else ""), e.step) for e in watch.events]
    else:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            caught = records
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_epoch(training, loader, use_das)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        for index, record in enumerate(caught):
            if "synchroniz" not in str(record.message) or \
                    os.path.abspath(record.filename) == _THIS_FILE:  # the bench's own synchronize
                continue
            step = None
            for first, boundary_step in boundaries:
                if index >= first:
                    step = boundary_step
            found.append((f"{os.path.relpath(record.filename, REPO_ROOT)}:{record.lineno}", step))
    sites: Dict[str, List[object]] = {}
    for site, step in found:
        sites.setdefault(site, []).append(step)
    lines = []
    for site, stepped in sites.items():
        logged = [s for s in stepped if s == "end" or (isinstance(s, int)
                                                        and (s + 1) % opt.log_every == 0)]
        where = ("at the logging point only" if len(logged) == len(stepped)
                 else f"{len(stepped)} calls in {steps} steps")
        lines.append(f"{site}: {where}")
    return lines


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


def make_loader(opt: argparse.Namespace, model: torch.nn.Module, sources: List, num_images: int,
                num_classes: int, device: torch.device, pipeline: str = "main"):
    """The training DataLoader exactly as main.main() builds it, over ``num_images`` images that
    reuse the generated ``sources`` in turn. ``pipeline``: main (--decode as main.py resolves
    it), old (the PIL reference: PIL decode, v1 transforms, float32 normalized in the workers)."""
    import datasampler

    from datasets import ImageDataset, Split, build_pil_transform, image_dataset, resolve_decode

    main = import_main()
    labels = class_labels(num_images, num_classes)
    split = Split(images=[sources[i % len(sources)] for i in range(num_images)], labels=labels,
                  class_names=[f"class_{c}" for c in range(num_classes)])
    transform_config = model.transform_config(opt.crop_size, opt.augmentation)
    if pipeline == "old":
        train_set = ImageDataset(split, build_pil_transform(transform_config, train=True))
    else:
        decode = resolve_decode(opt.decode, device, transform_config)
        train_set = image_dataset(split, transform_config, True, decode)
    sampler = datasampler.select(opt.data_sampler, split.labels, opt.bs, opt.samples_per_class,
                                 seed=opt.seed, class_names=split.class_names)
    return main.make_train_loader(train_set, sampler, opt, device)


# ----------------------------------------------------------------------------- report
@dataclass
class Report:
    lines: List[str] = field(default_factory=list)
    summary: Dict[str, str] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)


def throughput(bs: int, steps: int, seconds: Sequence[float]) -> Tuple[float, str]:
    rates = [bs * steps / s for s in seconds]
    return statistics.median(rates), " ".join(f"{r:.1f}" for r in rates)


def das_settings(opt: argparse.Namespace) -> List[bool]:
    return {"both": [False, True], "on": [True], "off": [False]}[opt.bench_das]


def bench_step(training: Training, args, report: Report) -> None:
    opt = training.opt
    batches = device_batches(training, min(args.steps, 4))
    settings = das_settings(args)
    for use_das in settings:  # warm-up (allocator, autotuning, torch.compile, DAS banks)
        run_epoch(training, DeviceBatches(batches, args.warmup), use_das)
    seconds: Dict[bool, List[float]] = {s: [] for s in settings}
    peak_mb: Dict[bool, float] = {}
    for _ in range(args.repeats):  # interleaved, so that a busy neighbour hits both alike
        for use_das in settings:
            if training.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(training.device)
            elapsed = run_epoch(training, DeviceBatches(batches, args.steps), use_das)
            seconds[use_das].append(elapsed)
            if training.device.type == "cuda":
                peak_mb[use_das] = max(peak_mb.get(use_das, 0.0),
                                       torch.cuda.max_memory_allocated(training.device) / 2**20)
    rates = {}
    for use_das in settings:
        label = "DAS on " if use_das else "DAS off"
        rates[use_das], runs = throughput(opt.bs, args.steps, seconds[use_das])
        memory = f", peak GPU memory {peak_mb[use_das]:.0f} MB" if use_das in peak_mb else ""
        report.say(f"step, data on the device, {label}: {rates[use_das]:.1f} images/s "
                   f"({1e3 * opt.bs / rates[use_das]:.1f} ms/step; median of {args.repeats} x "
                   f"{args.steps} steps: {runs}){memory}")
        key = "" if use_das or len(settings) == 1 else "_no_das"
        report.summary[f"imgs_per_s{key}"] = f"{rates[use_das]:.1f}"
        if use_das in peak_mb:
            report.summary[f"peak_gpu_mb{key}"] = f"{peak_mb[use_das]:.0f}"
    if len(settings) == 2:
        report.say(f"DAS step overhead (DAS-off images/s / DAS-on images/s - 1): "
                   f"{100 * (rates[False] / rates[True] - 1):.1f}%")
        report.summary["das_overhead"] = f"{rates[False] / rates[True] - 1:.4f}"
    if args.breakdown_steps:
        for use_das in settings:
            parts = breakdown(training, DeviceBatches(batches, args.breakdown_steps + 1), use_das)
            label = "DAS on " if use_das else "DAS off"
            report.say(f"breakdown, {label} (hooks with synchronize + perf_counter on the real "
                       f"step, median of {args.breakdown_steps} steps of "
                       f"{parts['step'] * 1e3:.1f} ms):")
            report.say("  " + format_breakdown(parts))
            report.say(f"  DAS + mining + loss (forward and backward) share of the step: "
                       f"{100 * parts['head_share']:.1f}%"
                       + (f"; DAS forward alone: {100 * parts['das_forward_share']:.1f}%"
                          if use_das else ""))
            key = "" if use_das or len(settings) == 1 else "_no_das"
            report.summary[f"das_mining_loss_share{key}"] = f"{parts['head_share']:.4f}"
            if use_das:
                report.summary["das_forward_share"] = f"{parts['das_forward_share']:.4f}"
    if args.check_syncs:
        for use_das in settings:
            label = "DAS on" if use_das else "DAS off"
            lines = sync_check(training, batches, args.check_syncs, use_das)
            how = ("torch.cuda.set_sync_debug_mode" if training.device.type == "cuda"
                   else "SyncWatch, calls that sync on CUDA")
            report.say(f"host syncs, {label}, {args.check_syncs} steps, --log_every "
                       f"{opt.log_every} ({how}): {len(lines)} call site(s)")
            for line in lines:
                report.say("  " + line)


def image_sources(args, folder: Optional[str], count: int) -> List:
    width, height = args.image_size
    if args.images == "memory":
        return memory_images(count, width, height, args.seed)
    started = time.perf_counter()
    paths = write_jpegs(folder, count, width, height, args.seed)
    size_kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
    print(f"generated {count} JPEGs of {width}x{height} ({size_kb:.0f} KB on average) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return paths


def bench_loaders(training: Optional[Training], model: torch.nn.Module, opt, args,
                  device: torch.device, report: Report) -> None:
    num_images = opt.bs * args.loader_batches
    with tempfile.TemporaryDirectory() as folder:
        sources = image_sources(args, folder, min(args.unique_images, num_images))
        what = (f"{args.image_size[0]}x{args.image_size[1]} "
                f"{'JPEGs' if args.images == 'jpeg' else 'in-memory arrays'}")
        if "loader" in args.modes:
            loader = make_loader(opt, model, sources, num_images, args.num_classes, device)
            seconds = []
            for epoch in range(args.repeats + 1):  # the first epoch starts the workers
                loader.batch_sampler.batch_sampler.set_epoch(epoch)
                started = time.perf_counter()
                for _ in loader:
                    pass
                if epoch:
                    seconds.append(time.perf_counter() - started)
            rate, runs = throughput(opt.bs, args.loader_batches, seconds)
            report.say(f"DataLoader alone, --kernels {opt.kernels}, bs {opt.bs}, crop "
                       f"{opt.crop_size}, --augmentation {opt.augmentation}, {what}: {rate:.1f} "
                       f"images/s (median of {args.repeats} epochs of {args.loader_batches} "
                       f"batches: {runs})")
            report.summary["loader_imgs_per_s"] = f"{rate:.1f}"
            del loader
        if "loader_compare" in args.modes:
            compare_loaders(opt, model, sources, num_images, args, device, what, report)
        if "step_loader" in args.modes:
            loader = make_loader(opt, model, sources, num_images, args.num_classes, device)
            for use_das in das_settings(args):
                seconds = []
                for epoch in range(args.repeats + 1):  # the first epoch starts the workers
                    loader.batch_sampler.batch_sampler.set_epoch(epoch)
                    elapsed = run_epoch(training, loader, use_das)
                    if epoch:
                        seconds.append(elapsed)
                rate, runs = throughput(opt.bs, args.loader_batches, seconds)
                label = "DAS on " if use_das else "DAS off"
                report.say(f"step with the DataLoader (--kernels {opt.kernels}, {what}), {label}: "
                           f"{rate:.1f} images/s (median of {args.repeats} epochs of "
                           f"{args.loader_batches} steps: {runs})")
                key = "" if use_das or len(das_settings(args)) == 1 else "_no_das"
                report.summary[f"step_loader_imgs_per_s{key}"] = f"{rate:.1f}"


def epoch_seconds(loader, epoch: int) -> float:
    """Wall time of one pass over ``loader`` (its batches on the device when it decodes there)."""
    loader.batch_sampler.batch_sampler.set_epoch(epoch)
    started = time.perf_counter()
    for images, _, _ in loader:
        pass
    if isinstance(images, torch.Tensor):
        synchronize(images.device)
    return time.perf_counter() - started


def compare_loaders(opt, model, sources, num_images: int, args, device: torch.device, what: str,
                    report: Report) -> None:
    """Old (PIL decode, v1 transforms, float32 normalized in the workers) against new (main.py's
    loader: torchvision.io decode, v2 on uint8, normalized on the device), epochs alternated so
    that a busy machine slows both alike; the medians are compared."""
    loaders = {name: make_loader(opt, model, sources, num_images, args.num_classes, device, name)
               for name in ("old", "main")}
    normalize = model.input_normalizer.to(device)
    seconds = {name: [] for name in loaders}
    for epoch in range(args.repeats + 1):  # the first epoch starts the workers
        for name, loader in loaders.items():
            elapsed = epoch_seconds(loader, epoch)
            if epoch:
                seconds[name].append(elapsed)
    # what the new loader leaves to the device: the normalization of a uint8 batch
    batch = torch.zeros(opt.bs, 3, opt.crop_size, opt.crop_size, dtype=torch.uint8, device=device)
    started = time.perf_counter()
    for _ in range(5):
        normalize(batch)
    synchronize(device)
    normalize_ms = (time.perf_counter() - started) / 5 * 1e3
    rates = {}
    for name, label in (("old", "old: PIL decode + v1 transforms + float32 Normalize in workers"),
                        ("main", "new: torchvision.io decode + v2 on uint8, normalized on device")):
        rates[name], runs = throughput(opt.bs, args.loader_batches, seconds[name])
        report.say(f"DataLoader {label} (--kernels {opt.kernels}, crop {opt.crop_size}, {what}): "
                   f"{rates[name]:.1f} images/s (median of {args.repeats} epochs of "
                   f"{args.loader_batches} batches: {runs})")
    report.say(f"device-side normalization of one uint8 batch ({device}): {normalize_ms:.1f} ms "
               f"(not included above)")
    report.summary["loader_imgs_per_s_old"] = f"{rates['old']:.1f}"
    report.summary["loader_imgs_per_s_new"] = f"{rates['main']:.1f}"
    report.summary["speedup"] = f"{rates['main'] / rates['old']:.2f}"


def image_size(text: str) -> Tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 500x375, got '{text}'")
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got '{text}'")
    return width, height


def parse_bench_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options go to main.py's parser; bench defaults: " + " ".join(BENCH_DEFAULTS))
    add = parser.add_argument
    add("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    add("--modes", nargs="+", default=["step", "step_loader"], choices=MODES)
    add("--das", dest="bench_das", default="both", choices=["both", "on", "off"],
        help="Steps with DAS, without, or both (interleaved). DAS takes main.py's --das_* options.")
    add("--steps", type=int, default=10, help="Timed steps per repeat (mode step).")
    add("--warmup", type=int, default=3, help="Untimed steps first, per DAS setting.")
    add("--repeats", type=int, default=3, help="Timed repeats; the median is reported.")
    add("--breakdown_steps", type=int, default=8,
        help="Steps of the hook-timed pass that splits the step into parts (0: skip).")
    add("--check_syncs", type=int, default=0, metavar="STEPS",
        help="Also run STEPS steps watching for host syncs (mode step).")
    add("--num_classes", type=int, default=100, help="Training classes (DAS statistics, proxies).")
    add("--loader_batches", type=int, default=8,
        help="Batches per epoch of the loader modes (their dataset holds bs x this many images).")
    add("--images", choices=["jpeg", "memory"], default="jpeg",
        help="Loader modes: generated JPEG files, or uint8 arrays in memory (no decoding).")
    add("--image_size", type=image_size, default=(500, 375), help="WIDTHxHEIGHT of the images.")
    add("--unique_images", type=int, default=256,
        help="Distinct generated images (the dataset reuses them in turn).")
    add("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default).")
    add("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    for name in ("steps", "repeats", "loader_batches", "unique_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.breakdown_steps < 0 or args.check_syncs < 0:
        parser.error("--warmup, --breakdown_steps and --check_syncs must be non-negative")
    if args.breakdown_steps == 1:
        parser.error("--breakdown_steps must be 0 or at least 2 (a step is timed to the next)")
    return args, rest + ["--seed", str(args.seed)]


def main(argv: Optional[Sequence[str]] = None) -> Report:
    args, main_argv = parse_bench_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opt = bench_options(main_argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available")
    if args.num_classes * opt.samples_per_class < opt.bs:
        raise SystemExit(f"--num_classes {args.num_classes} x --samples_per_class "
                         f"{opt.samples_per_class} is smaller than --bs {opt.bs}: a batch needs "
                         f"{math.ceil(opt.bs / opt.samples_per_class)} distinct classes")
    torch.manual_seed(args.seed)
    report = Report()
    import criteria

    mining = (f" with --batch_mining {opt.batch_mining}"
              if criteria.REGISTRY.get(opt.loss).requires_miner else "")
    precision = ("bf16 autocast (--amp), channels_last" if device.type == "cuda" and opt.amp
                 else "float32 (TF32 matmuls on CUDA), channels_last" if device.type == "cuda"
                 else "float32")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{os.cpu_count()} CPU core(s), {torch.get_num_threads()} torch threads"
    report.say(f"device {device} ({card}); torch {torch.__version__}; arch {opt.arch}, crop "
               f"{opt.crop_size}, bs {opt.bs} ({opt.samples_per_class} per class), embed_dim "
               f"{opt.embed_dim}, loss {opt.loss}{mining}, {args.num_classes} classes; DAS: "
               f"--das_num_produce {opt.das_num_produce} --das_dfs_num_scale "
               f"{opt.das_dfs_num_scale}{' --detach' if opt.detach else ''}"
               f"{' --aux_loss' if opt.aux_loss else ''}; {precision}"
               f"{', torch.compile' if opt.compile else ''}; --log_every {opt.log_every}")
    training = None
    if "step" in args.modes or "step_loader" in args.modes:
        training = build_training(opt, args.num_classes, device)
        model = training.model
    else:
        import architectures
        model = architectures.select(opt.arch, opt.embed_dim, pretrained=False)
    if "step" in args.modes:
        bench_step(training, args, report)
    if {"loader", "step_loader", "loader_compare"} & set(args.modes):
        bench_loaders(training, model, opt, args, device, report)
    report.summary["device"] = device.type
    last = ("loader_imgs_per_s_old", "loader_imgs_per_s_new", "speedup")
    if "loader_compare" in args.modes:  # the comparison ends the line
        report.summary = dict([(k, v) for k, v in report.summary.items() if k not in last]
                              + [(k, report.summary[k]) for k in last])
    print(" ".join(f"{k}={v}" for k, v in report.summary.items()), flush=True)
    return report


if __name__ == "__main__":
    main()
