"""Images per second of full training steps, with and without DAS, and where the step's time goes.

Every step runs through ``training.loop.train_one_epoch`` with the objects main.py builds
(``architectures.select``, ``batchminer.select``, ``criteria.select``, ``build_producer``,
``training.build.make_optimizer``; channels_last on CUDA, bf16 autocast with ``--amp``;
``--compile``), so the figures are those of the code users run. Modes (``--modes``, any of):

* ``step``: batches generated once and kept on the device, fed to ``train_one_epoch`` by a stand-in
  loader: data loading excluded.
* ``step_loader``: ``train_one_epoch`` fed by main.py's DataLoader (``SeededDataset(ImageDataset)``,
  ``SeededBatches``, the training transform, ``--kernels`` workers, pinned memory on CUDA,
  persistent workers) over generated images: data loading included.
* ``loader``: that DataLoader alone (images per second it delivers), to set against the step.

Images are JPEGs of ``--image_size`` (default 500x375, about a CUB/SOP photo) written to a
temporary folder, or with ``--images memory`` uint8 arrays held by the dataset (no decoding). The
old PIL loader against main.py's: ``bench/loader_compare.py``.

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

``--check_syncs N`` then runs N steps watching for host syncs (``bench/sync_watch.py``: on CUDA
``torch.cuda.set_sync_debug_mode("warn")``, on CPU the calls that would sync on CUDA).

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
import os
import statistics
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from bench import sync_watch
from bench._harness import (BENCH_DEFAULTS, DAS_SETTINGS, DeviceBatches, Report,
                            add_common_options, add_image_options, device_batches,
                            generated_split, main_dataset, make_loader, random_weight_training,
                            require_positive, run_epoch, set_up, synchronize, throughput)

if TYPE_CHECKING:
    from training.build import Training

MODES = ("step", "step_loader", "loader")
PHASES = ("backbone_forward", "das_forward", "mining", "loss_forward", "das_loss_backward",
          "backbone_backward", "optimizer", "other")
HEAD_PHASES = ("das_forward", "mining", "loss_forward", "das_loss_backward")


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
        sync_watch.report_syncs(training, batches, args.check_syncs, settings, report.say)


def das_settings(args: argparse.Namespace) -> List[bool]:
    return DAS_SETTINGS[args.bench_das]


def bench_loaders(training: Optional[Training], model: torch.nn.Module, opt, args,
                  device: torch.device, report: Report) -> None:
    with tempfile.TemporaryDirectory() as folder:
        split, what = generated_split(args, folder, opt.bs * args.loader_batches)
        if "loader" in args.modes:
            loader = make_loader(opt, main_dataset(opt, model, split, device), device)
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
        if "step_loader" in args.modes:
            loader = make_loader(opt, main_dataset(opt, model, split, device), device)
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


def parse_bench_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options go to main.py's parser; bench defaults: " + " ".join(BENCH_DEFAULTS))
    add_common_options(parser)
    add = parser.add_argument
    add("--modes", nargs="+", default=["step", "step_loader"], choices=MODES)
    add("--das", dest="bench_das", default="both", choices=DAS_SETTINGS,
        help="Steps with DAS, without, or both (interleaved). DAS takes main.py's --das_* options.")
    add("--steps", type=int, default=10, help="Timed steps per repeat (mode step).")
    add("--warmup", type=int, default=3, help="Untimed steps first, per DAS setting.")
    add("--repeats", type=int, default=3, help="Timed repeats; the median is reported.")
    add("--breakdown_steps", type=int, default=8,
        help="Steps of the hook-timed pass that splits the step into parts (0: skip).")
    add("--check_syncs", type=int, default=0, metavar="STEPS",
        help="Also run STEPS steps watching for host syncs (mode step; bench/sync_watch.py).")
    add_image_options(parser)
    args, rest = parser.parse_known_args(argv)
    require_positive(parser, args, ["steps", "repeats", "loader_batches", "unique_images"])
    if args.warmup < 0 or args.breakdown_steps < 0 or args.check_syncs < 0:
        parser.error("--warmup, --breakdown_steps and --check_syncs must be non-negative")
    if args.breakdown_steps == 1:
        parser.error("--breakdown_steps must be 0 or at least 2 (a step is timed to the next)")
    return args, rest


def main(argv: Optional[Sequence[str]] = None) -> Report:
    args, main_argv = parse_bench_args(argv)
    opt, device = set_up(args, main_argv)
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
        training = random_weight_training(opt, args.num_classes, device)
        model = training.model
    else:
        import architectures
        model = architectures.select(opt.arch, opt.embed_dim, pretrained=False)
    if "step" in args.modes:
        bench_step(training, args, report)
    if {"loader", "step_loader"} & set(args.modes):
        bench_loaders(training, model, opt, args, device, report)
    report.summary["device"] = device.type
    report.print_summary()
    return report


if __name__ == "__main__":
    main()
