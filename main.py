"""Train and evaluate a deep metric learning model, optionally with densely-anchored sampling.

    python main.py                                   # bundled Omniglot default, minutes on a CPU
    python main.py --dataset cub200 --source DATA --loss multisimilarity \
        --arch resnet50_double_frozen_normalize --embed_dim 512 \
        --embedding_producer_used --produce_type DAS --das_dfs_num_scale 8

Reads top to bottom: options -> build (data, network, miner/criterion/DAS, optimizer:
training/build.py) -> run folder -> (resume: training/resume.py) -> epochs of training and
evaluation (training/loop.py) -> summary. See README.md for every option.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, NoReturn, Optional, Tuple

import torch

import das as dense_anchors
from parameters import RunSpec, parse_command_line, resolve_dataset_defaults
from training.build import Training, build_training, choose_device
from training.checks import OptionError, validate_options
from training.loop import EpochStats, epoch_row, evaluate_all, format_results, train_one_epoch
from training.resume import restore_run_state, resume_options, run_state
from training.stops import StopRequest, stops_reported
from utilities import checkpoint as ckpt
from utilities import distributed
from utilities import run_folder as rf
from utilities.errors import UserError, resume_hint, run_command
from utilities.seeding import seed_everything


@dataclass
class ActiveRun:
    """A run in progress: what it trains with, where it writes and how far it has got."""

    training: Training
    folder: str
    stop: StopRequest
    best: Dict  # the epoch of checkpoint_best.pth: {"key", "value", "epoch"}
    writer: Optional[object] = None  # TensorBoard (rank 0)
    metrics: Optional[rf.MetricsTable] = None  # metrics.csv (rank 0)
    epoch: int = 0  # epochs finished
    global_step: int = 0
    epoch_stats: EpochStats = field(default_factory=EpochStats)  # sums of the unfinished epoch

    def checkpoint(self, epoch: int) -> Dict:
        return run_state(self.training, epoch, self.global_step, self.best, self.epoch_stats)


def main(argv: Optional[List[str]] = None) -> str:
    """One training run, start to end; returns its run folder. The folder's lock and torch's
    thread count are released / restored however it ends (tests call it repeatedly)."""
    threads = torch.get_num_threads()
    try:
        active = start(argv)
        spec = active.training.opt
        with stops_reported(active.folder, spec.kernels):
            if spec.eval_initial and active.epoch == 0 and active.training.sampler.start_batch == 0:
                evaluate_untrained(active)
            # Epoch numbers in logs start at 1; row 0 is the untrained network (--eval_initial).
            for epoch in range(active.epoch, spec.n_epochs):
                train_and_evaluate(active, epoch)
        finish(active)
        return active.folder
    finally:
        rf.release_locks()
        torch.set_num_threads(threads)


def run(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: :func:`main`, its bad input and known failures printed as one line
    with their exit status (utilities.errors.run_command): 2, or 130 after Ctrl-C."""
    def command() -> int:
        main(argv)
        return 0

    return run_command(command)


# ----------------------------------------------------------------------------- set-up
def start(argv: Optional[List[str]]) -> ActiveRun:
    """Options -> data, network and learner -> run folder. A ValueError raised here is bad
    input (a member refusing a value it was given) and becomes one line; once the epochs run,
    a ValueError is a bug and keeps its traceback."""
    try:
        distributed.init_from_environment()
        spec, given = command_line_options(argv)
        validate_options(spec, given)
        device = choose_device(spec)
        if spec.resume and device.type == "cpu" and spec.torch_threads != torch.get_num_threads():
            # CPU float reductions depend on the thread count: continue as the run started.
            print(f"using {spec.torch_threads} torch threads, as the run did", flush=True)
            torch.set_num_threads(spec.torch_threads)
        seed_everything(spec.seed)
        return open_run(build_training(spec, device))
    except ValueError as error:
        if isinstance(error, UserError):
            raise
        raise OptionError(str(error)) from None


def command_line_options(argv: Optional[List[str]]) -> Tuple[RunSpec, Dict]:
    """The run's spec and the options typed: parsed once; for --resume, the saved spec."""
    cli, given = parse_command_line(argv)
    if cli.resume is None:
        return resolve_dataset_defaults(cli), given
    return resume_options(cli.resume, given), {}


def open_run(training: Training) -> ActiveRun:
    """The run folder: created and locked for a new run; for --resume the saved one, its
    checkpoint's state loaded and metrics.csv cut back to it. Rank 0 writes everything."""
    spec, splits = training.opt, training.splits
    data_record = rf.training_data_record(splits.train.class_names, len(splits.train))
    active = ActiveRun(training, folder="", stop=StopRequest(),
                       best={"key": training.selection_key, "value": -math.inf, "epoch": -1})
    if spec.resume:  # before any state is loaded: the checkpoint belongs to the data it saw
        rf.check_same_training_data(vars(spec), data_record,
                                    os.path.join(spec.resume, rf.CONFIG_FILE))
        active.folder = spec.resume
        active.epoch, active.global_step, active.best = restore_run_state(
            training, os.path.join(active.folder, rf.LAST_CHECKPOINT), active.epoch_stats)
        if distributed.is_main_process():
            rf.MetricsTable(active.folder).truncate_after(active.epoch)
    elif distributed.is_main_process():
        active.folder = rf.create_run_folder(spec.save_path, spec.savename, spec.dataset,
                                             spec.arch, spec.seed)
        rf.lock_run_folder(active.folder)
    active.folder = distributed.broadcast_string(active.folder)
    active.stop.install()
    if distributed.is_main_process():
        write_run_header(active, data_record)
    return active


def write_run_header(active: ActiveRun, data_record: Dict) -> None:
    """Rank 0: config.json (the spec, how it runs, what it trains on), the first lines of the
    log, TensorBoard and metrics.csv."""
    from torch.utils.tensorboard import SummaryWriter  # imported late: slow import

    training, spec = active.training, active.training.opt
    rf.write_config(active.folder, dict(spec.to_config(), device=str(training.device),
                                        world_size=distributed.world_size(),
                                        torch_threads=torch.get_num_threads(), **data_record))
    print(f"run folder: {active.folder}", flush=True)
    print(f"device: {training.device}  train: {len(training.splits.train)} images / "
          f"{training.splits.train.num_classes} classes  batches per epoch: "
          f"{len(training.sampler)}", flush=True)
    active.writer = SummaryWriter(active.folder, purge_step=active.global_step or None)
    active.metrics = rf.MetricsTable(active.folder)


# ----------------------------------------------------------------------------- epochs
def evaluate_untrained(active: ActiveRun) -> None:
    """--eval_initial: metrics.csv row 0, the network before any step."""
    training, spec = active.training, active.training.opt
    initial = evaluate_all(training.model, training.eval_sets, spec, training.device,
                           active.writer, 0)
    if distributed.is_main_process():
        active.metrics.append(dict(epoch=0, loss=float("nan"), lr=spec.lr, **initial))
        print(f"epoch 0 (untrained): {format_results(initial)}", flush=True)


def train_and_evaluate(active: ActiveRun, epoch: int) -> None:
    """Epoch ``epoch + 1``: train (a stop request saves and exits), evaluate, record."""
    training, spec = active.training, active.training.opt
    started = time.time()
    training.sampler.set_epoch(epoch)
    if training.storage is not None:  # fill / refresh the sampler's storage (timed here)
        training.storage.epoch_start(epoch)
    training.model.warmup = epoch < spec.n_warm  # --n_warm: only the embedding layer trains
    active.global_step, stopped = train_one_epoch(training, epoch + 1, active.epoch_stats,
                                                  active.writer, active.stop, active.global_step)
    if stopped:
        stop_run(active, f"{active.stop.signal_name} during epoch {epoch + 1}", save_epoch=epoch)
    training.scheduler.step()
    train_means, active.epoch_stats = active.epoch_stats.means(), EpochStats()
    training.sampler.start_batch = 0
    results = evaluate_all(training.model, training.eval_sets, spec, training.device,
                           active.writer, epoch + 1)
    if distributed.is_main_process():
        row = epoch_row(epoch + 1, train_means, training.optimizer, time.time() - started,
                        results)
        record_epoch(active, epoch + 1, row, results)
    distributed.barrier()


def record_epoch(active: ActiveRun, epoch: int, row: Dict[str, float],
                 results: Dict[str, float]) -> None:
    """Rank 0, after ``epoch``: metrics.csv and TensorBoard, DAS counters when due, the log
    line, checkpoint_best.pth when the selection metric improved, checkpoint_last.pth."""
    spec, key = active.training.opt, active.training.selection_key
    active.metrics.append(row)
    for name, value in row.items():
        if name != "epoch":
            active.writer.add_scalar(f"epoch/{name}", value, epoch)
    dense_anchors.save_frequency_if_due(active.training.das, epoch, spec.das_save_frequency_epochs,
                                        active.folder)
    print(f"epoch {epoch}/{spec.n_epochs} loss={row['loss']:.4f}  {format_results(results)}",
          flush=True)
    current = results.get(key)
    with active.stop.saving():
        if current is not None and current > active.best["value"]:
            active.best = {"key": key, "value": current, "epoch": epoch}
            ckpt.save_checkpoint(active.checkpoint(epoch),
                                 os.path.join(active.folder, rf.BEST_CHECKPOINT))
        ckpt.save_checkpoint(active.checkpoint(epoch),
                             os.path.join(active.folder, rf.LAST_CHECKPOINT))
    if active.stop.exit_after_save:
        stop_run(active, f"a second {active.stop.signal_name} during the save after epoch {epoch}")


def stop_run(active: ActiveRun, when: str, save_epoch: Optional[int] = None) -> NoReturn:
    """Exit 130 on a stop request (SIGINT/SIGTERM), saying how to continue; with
    ``save_epoch`` (stopped mid-epoch), rank 0 first saves checkpoint_last.pth."""
    last = os.path.join(active.folder, rf.LAST_CHECKPOINT)
    if distributed.is_main_process():
        if save_epoch is not None:
            with active.stop.saving():
                ckpt.save_checkpoint(active.checkpoint(save_epoch), last)
        print(f"\nstopped by {when}; saved {last}. {resume_hint(active.folder)}", flush=True)
    distributed.cleanup()
    sys.exit(130)


# ----------------------------------------------------------------------------- summary
def finish(active: ActiveRun) -> None:
    """Rank 0: close TensorBoard, write and print training_summary.txt."""
    if distributed.is_main_process():
        active.writer.close()
        write_training_summary(active.folder, active.training.opt)
        with open(os.path.join(active.folder, rf.SUMMARY_FILE)) as summary:
            print(summary.read(), end="")
        print(f"run folder: {active.folder}", flush=True)
    distributed.cleanup()


def write_training_summary(folder: str, spec: RunSpec) -> None:
    """training_summary.txt: the last epoch's figures and the best epoch's by the run's own
    selection metric, read back through the shared run-folder reader."""
    run = rf.read_run(folder)
    lines = [f"dataset: {spec.dataset}   arch: {spec.arch}   loss: {spec.loss}   "
             f"DAS: {'on' if spec.embedding_producer_used else 'off'}   seed: {spec.seed}"]
    last = run.pick("last")
    if last is None:
        lines.append("no epoch finished")
        rf.write_summary(folder, lines)
        return
    metric_columns = [c for c in last if "/" in c and not c.startswith("stats/")]

    def figures(row: Dict) -> str:
        return "  ".join(f"{c}={row[c]:.4f}" for c in metric_columns if row.get(c) is not None)

    lines.append(f"last epoch ({int(last['epoch'])}): {figures(last)}")
    key, best = run.selection_key, run.pick("best")
    if best is not None:
        lines.append(f"best epoch ({int(best['epoch'])}) selected by {key} "
                     f"(split '{key.split('/')[0]}'): {figures(best)}")
    else:
        lines.append(f"best: no epoch reported {key}")
    rf.write_summary(folder, lines)


if __name__ == "__main__":
    sys.exit(run())
