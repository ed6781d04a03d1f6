"""Host syncs of a training step, found without a GPU.

A call that makes the host wait for the device (``.item()``, ``nonzero``, boolean-mask indexing,
``torch.tensor(..., device=)`` ...) stalls a CUDA step. On CUDA, ``torch.cuda.set_sync_debug_mode
("warn")`` flags every real sync; on CPU nothing waits, so :class:`SyncWatch` (a
``TorchFunctionMode``) flags the calls that would sync on CUDA by name, with the file, function
and line that made them. Calls inside a block that runs on CPU tensors only (the body of ``if
<...>.type == "cpu":``, the ``else`` of ``!= "cpu"``) are marked as such: on CUDA the code takes
the other branch. Tests use it (tests/test_bench_scripts.py); ``bench/train_step.py
--check_syncs N`` runs it after its timings.

    python bench/sync_watch.py --steps 7 --loss triplet --batch_mining distance
"""
from __future__ import annotations

import argparse
import ast
import functools
import os
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch.overrides import TorchFunctionMode

from bench import _harness as harness

if TYPE_CHECKING:
    from training.build import Training

REPO_ROOT = harness.REPO_ROOT
# Calls that make the host wait for the device on CUDA (torch.cuda.set_sync_debug_mode flags them;
# pytorch/pytorch#62092, #120996). On CPU nothing waits, so SyncWatch flags them by name.
SYNCING_CALLS = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
    "__format__", "__array__", "nonzero", "argwhere", "masked_select", "unique",
    "unique_consecutive", "_unique2", "bincount", "histc", "multinomial", "randperm", "equal",
    "allclose"})

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OPTIM_DIR = os.path.join(_TORCH_DIR, "optim") + os.sep
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


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


@functools.lru_cache(maxsize=None)
def _cpu_only_blocks(filename: str) -> Tuple[Tuple[int, int, str], ...]:
    """(first line, last line, condition) of the blocks of ``filename`` that run only on CPU
    tensors: the body of ``if <x>.type == "cpu":`` and the ``else`` of ``if <x>.type != "cpu":``."""
    try:
        with open(filename, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return ()
    blocks = []
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if not (isinstance(node, ast.If) and isinstance(test, ast.Compare)
                and len(test.ops) == 1 and isinstance(test.left, ast.Attribute)
                and test.left.attr == "type" and isinstance(test.comparators[0], ast.Constant)
                and test.comparators[0].value == "cpu"):
            continue
        block = {ast.Eq: node.body, ast.NotEq: node.orelse}.get(type(test.ops[0]))
        if block:
            blocks.append((block[0].lineno, block[-1].end_lineno, ast.unparse(test)))
    return tuple(blocks)


def cpu_only_branch(filename: str, line: int) -> str:
    """The condition of the CPU-only block that holds ``line`` of ``filename``, else ''."""
    return next((condition for first, last, condition in _cpu_only_blocks(filename)
                 if first <= line <= last), "")


@dataclass
class SyncEvent:
    call: str
    file: str  # relative to the repository
    function: str
    line: int
    step: object  # batch index, or "end" after the last batch, or None before the first
    cpu_only: str = ""  # condition of the CPU-only block the call lies in, if any

    def site(self) -> Tuple[str, str, str]:
        return (self.file, self.function, self.call)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function}) {self.call} at step {self.step}"


class SyncWatch(TorchFunctionMode):
    """Records every call that would synchronize with the host on CUDA, with the repository file,
    function and line that made it and the training step (``self.step``) it fell in.

    Ignored: calls made by torch.optim itself (Adam reads its step counters, CPU tensors unless
    ``capturable``, with ``.item()``; that never waits for the GPU) and the benches' own calls.
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
                if filename.startswith(_BENCH_DIR):
                    return
                self.events.append(SyncEvent(
                    call, os.path.relpath(filename, REPO_ROOT), frame.f_code.co_name,
                    frame.f_lineno, self.step, cpu_only_branch(filename, frame.f_lineno)))
                return
            frame = frame.f_back


def sync_check(training: Training, batches, steps: int, use_das: bool) -> List[str]:
    """Run ``steps`` steps of train_one_epoch watching for host syncs; one line per call site.

    On CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` (every real sync, with the Python line
    that caused it). On CPU: :class:`SyncWatch` (calls known to sync on CUDA), DAS taking its
    accelerator path. A site is "at the logging point only" when all its calls fall in steps where
    ``global_step % --log_every == 0`` or after the last batch."""
    watch = None if training.device.type == "cuda" else SyncWatch()
    caught: List[warnings.WarningMessage] = []
    boundaries: List[Tuple[int, object]] = []  # (number of warnings so far, step starting now)

    def on_batch(step):
        if watch is not None:
            watch.step = step
        boundaries.append((len(caught), step))

    loader = harness.DeviceBatches(batches, steps, on_batch)
    found: List[Tuple[str, object]] = []
    if watch is not None:
        if use_das:  # emulate the accelerator's DAS bank write (CPU takes a compact path)
            training.das.sync_free_bank_writes = True
        try:
            with watch:
                harness.run_epoch(training, loader, use_das)
        finally:
            training.das.sync_free_bank_writes = None
        found = [(f"{e.file}:{e.line} ({e.function}) {e.call}"
                  + (f" [CPU-only branch: {e.cpu_only}]" if e.cpu_only else ""), e.step)
                 for e in watch.events]
    else:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            caught = records
            torch.cuda.set_sync_debug_mode("warn")
            try:
                harness.run_epoch(training, loader, use_das)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        for index, record in enumerate(caught):
            if "synchroniz" not in str(record.message) or \
                    os.path.abspath(record.filename).startswith(_BENCH_DIR):  # bench's own
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
                                                        and (s + 1) % training.opt.log_every == 0)]
        where = ("at the logging point only" if len(logged) == len(stepped)
                 else f"{len(stepped)} calls in {steps} steps")
        lines.append(f"{site}: {where}")
    return lines


def report_syncs(training: Training, batches, steps: int, settings: Sequence[bool],
                 say: Callable[[str], None]) -> None:
    """:func:`sync_check` with DAS off and/or on, one header line each, then its sites."""
    how = ("torch.cuda.set_sync_debug_mode" if training.device.type == "cuda"
           else "SyncWatch, calls that sync on CUDA")
    for use_das in settings:
        lines = sync_check(training, batches, steps, use_das)
        say(f"host syncs, {'DAS on' if use_das else 'DAS off'}, {steps} steps, --log_every "
            f"{training.opt.log_every} ({how}): {len(lines)} call site(s)")
        for line in lines:
            say("  " + line)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options go to main.py's parser; bench defaults: "
               + " ".join(harness.BENCH_DEFAULTS))
    harness.add_common_options(parser)
    parser.add_argument("--steps", type=int, default=10, help="Steps watched per DAS setting.")
    parser.add_argument("--das", dest="bench_das", default="both", choices=harness.DAS_SETTINGS,
                        help="Steps with DAS, without, or both.")
    args, main_argv = parser.parse_known_args(argv)
    harness.require_positive(parser, args, ["steps"])
    opt, device = harness.set_up(args, main_argv)
    training = harness.random_weight_training(opt, args.num_classes, device)
    batches = harness.device_batches(training, min(args.steps, 4))
    report_syncs(training, batches, args.steps, harness.DAS_SETTINGS[args.bench_das], print)


if __name__ == "__main__":
    main()
