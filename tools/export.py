"""Export a trained run's embedding network as TorchScript or ONNX, checked against PyTorch.

    python -m tools.export RUN_DIR --format torchscript --out model.pt
    pip install -r requirements-export.txt                              # for ONNX only
    python -m tools.export RUN_DIR --format onnx --out model.onnx

The file holds the whole embedding network in eval mode: backbone, pooling, embedding layer and,
for a ``normalize`` arch, the L2 normalization. Input: float32 ``(batch, 3, S, S)`` with S the
run's test crop (``--crop_size``, 256 for ``--augmentation big``), already resized, centre-cropped
and normalized as the run's test transform does; the batch size is free. Output: ``(batch,
embed_dim)`` float32. These facts are printed and written next to the file as ``FILE.json``.

Before anything is written, the exported file is loaded back (torch.jit.load, onnxruntime) and run
on a random batch; the largest absolute difference to the PyTorch model is printed, and a file
differing by more than 1e-4 is refused.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch

from tools._common import (WRITTEN_BY, ToolError, atomic_output, check_output, check_seed,
                           write_text)
from tools._trained_model import load_trained_model
from utilities.errors import run_command

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": (".pt",), "onnx": (".onnx",)}
TOLERANCE = 1e-4
EXAMPLE_BATCH = 2  # traced/exported with this batch, checked with CHECK_BATCH (the batch is free)
CHECK_BATCH = 3


def require_onnx() -> None:
    """Stop with the install command when onnx, onnxscript or onnxruntime is missing."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ToolError(f"--format onnx needs the {', '.join(missing)} package(s), not installed "
                        f"here: pip install -r requirements-export.txt")


def write_export(model: torch.nn.Module, fmt: str, example: torch.Tensor, path: str) -> None:
    """Write ``model`` traced/exported on ``example`` to ``path``."""
    with warnings.catch_warnings():
        # torch.jit says it is deprecated in favour of torch.export, whose files need torch
        # itself to run; TorchScript remains the format C++ libtorch loads.
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
            # Serialized in memory, then written by Python: torch's own file writer aborts the
            # process (status 134) when the disk fills; a Python write raises OSError instead.
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            with open(path, "wb") as handle:
                handle.write(buffer.getvalue())
            return
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(model, (example,), None, input_names=["images"],
                                    output_names=["embeddings"], dynamo=True, verbose=False,
                                    dynamic_shapes={"images": {0: batch}})
    program.save(path)


def run_export(fmt: str, path: str, batch: torch.Tensor) -> np.ndarray:
    """The exported file's output on ``batch``, run by its own runtime."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(path, map_location="cpu")
        with torch.no_grad():
            return loaded(batch).numpy()
    import onnxruntime  # optional: requirements-export.txt

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]


def check_outputs(fmt: str, out: str) -> None:
    """Refuse, before any work, an --out (or its FILE.json) that must not be written."""
    if fmt not in FORMATS:
        raise ToolError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    check_output(out, "--out", SUFFIXES[fmt])
    check_output(out + ".json", "--out (its description FILE.json)", (".json",))


def export(trained, fmt: str, out: str, seed: int = 0) -> Dict:
    """Export, check and (when within TOLERANCE) write; returns what was written to FILE.json.
    Both files are written through temporary files: nothing is left behind on any failure."""
    check_outputs(fmt, out)
    if fmt == "onnx":
        require_onnx()
    model = trained.model.to("cpu").eval()
    size = trained.crop_size
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=generator)
    check = torch.randn(CHECK_BATCH, 3, size, size, generator=generator)
    with atomic_output(out) as temporary:
        write_export(model, fmt, example, temporary)
        with torch.no_grad():
            expected = model(check).float().numpy()
        exported = run_export(fmt, temporary, check)
        if exported.shape != expected.shape:
            raise ToolError(f"the {fmt} export gives shape {exported.shape} where PyTorch gives "
                            f"{expected.shape}; nothing written")
        difference = float(np.abs(exported - expected).max())
        print(f"max abs difference to PyTorch on a random batch of {CHECK_BATCH}: "
              f"{difference:.3g}")
        if not difference <= TOLERANCE:
            raise ToolError(f"the {fmt} export differs from the PyTorch model by {difference:.3g} "
                            f"(> {TOLERANCE:g}) on a random batch; nothing written to '{out}'")
        description = describe(trained, model, fmt, out, size, difference)
        write_text(out + ".json", json.dumps(description, indent=2))
    return description


def describe(trained, model, fmt: str, out: str, size: int, difference: float) -> Dict:
    """What FILE.json says about the exported network's input and output."""
    convention = model.input_convention
    resize = int(round(size * 256 / 224))
    return {
        WRITTEN_BY: "tools.export",
        "format": fmt, "file": os.path.basename(out), "run": os.path.abspath(trained.folder),
        "checkpoint": os.path.abspath(trained.checkpoint_path), "epoch": trained.epoch,
        "arch": trained.spec.arch,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32",
                  "preprocessing": f"RGB image, {model.interpolation} Resize({resize}) of the "
                                   f"shorter side, "
                                   f"CenterCrop({size}), "
                                   + ("BGR channel order on a 0-255 scale, "
                                      if convention["bgr_255"] else "0-1 scale, ")
                                   + "minus mean, divided by std per channel",
                  "mean": list(convention["mean"]), "std": list(convention["std"]),
                  "bgr_255": convention["bgr_255"]},
        "output": {"name": "embeddings", "shape": ["batch", int(model.embed_dim)],
                   "dtype": "float32", "l2_normalized": bool(model.normalize)},
        "check": {"batch": CHECK_BATCH, "max_abs_difference": difference,
                  "tolerance": TOLERANCE},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.export",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run", help="Run folder, or a checkpoint file inside one.")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True,
                        help="File to write (.pt for torchscript, .onnx for onnx).")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"])
    parser.add_argument("--seed", type=int, default=0, help="Seeds the random check batch.")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:

        check_seed(args.seed)
        check_outputs(args.format, args.out)  # before loading anything
        if args.format == "onnx":
            require_onnx()
        trained = load_trained_model(args.run, args.checkpoint)
        description = export(trained, args.format, args.out, args.seed)
        shape = description["input"]["shape"]
        print(f"wrote {args.out} ({args.format}): input float32 {tuple(shape)}, "
              f"{description['input']['preprocessing']}; output "
              f"{tuple(description['output']['shape'])}"
              f"{', L2-normalized' if description['output']['l2_normalized'] else ''}")
        print(f"wrote {args.out}.json (input size and preprocessing)")
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
