"""Embed any image folder (recursively) or list of images with a trained run's network.

    python -m tools.embed RUN_DIR --images FOLDER_OR_LIST --out embeddings.npz [--checkpoint best]

The images go through the run's test transform (resize, centre crop, its normalization) and
:func:`evaluation.compute_embeddings`, in batches with a progress bar, on CUDA when present. The
``.npz`` (``numpy.load`` reads it without this codebase) holds ``embeddings`` (N, D) float32,
``paths`` (N,), and, when every image lies in a class subfolder, ``labels`` (N,) indexing
``class_names``; also ``normalized``, ``run``, ``checkpoint``, ``arch``, and the images that could
not be read, skipped, in ``skipped`` with ``skipped_reasons``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

from tools._common import (EmbeddingFile, ImageList, ToolError, check_loader, check_output,
                           choose_device, default_workers, embed_images, list_images)
from tools._trained_model import load_trained_model
from utilities.errors import run_command


def embed_to_file(trained, images: ImageList, device, batch_size: int,
                  num_workers: int) -> EmbeddingFile:
    """Embed ``images`` with a loaded run; unreadable images are listed, not embedded."""
    embeddings, kept, failed = embed_images(trained, images, device, batch_size, num_workers)
    if not len(kept):
        first = next(iter(failed.items()))
        raise ToolError(f"none of the {len(images.paths)} images of '{images.root}' could be read "
                        f"(e.g. '{first[0]}' {first[1]})")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ToolError(f"checkpoint '{trained.checkpoint_path}' gives NaN or infinite embeddings "
                        f"for {len(bad)} of {len(embeddings)} images (first: "
                        f"'{images.paths[kept[bad[0]]]}'); nothing written - use another "
                        f"checkpoint (--checkpoint best) or retrain")
    labels = None if images.labels is None else images.labels[kept]
    return EmbeddingFile(embeddings, np.asarray(images.paths, dtype=str)[kept], labels,
                         np.asarray(images.class_names, dtype=str) if labels is not None else None,
                         trained.normalized, np.asarray(list(failed), dtype=str),
                         np.asarray(list(failed.values()), dtype=str),
                         os.path.abspath(trained.folder),
                         os.path.abspath(trained.checkpoint_path), trained.spec.arch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.embed",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run", help="Run folder, or a checkpoint file inside one.")
    parser.add_argument("--images", required=True,
                        help="Image folder (searched recursively), one image, or a list file.")
    parser.add_argument("--out", required=True,
                        help="Output .npz file (.npz is appended to a name without suffix).")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any).")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="Images per batch (default: the run's --eval_bs).")
    parser.add_argument("--num_workers", type=int, default=default_workers(),
                        help="DataLoader worker processes.")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:

        check_loader(args.batch_size, args.num_workers)
        out = args.out
        if not os.path.splitext(out)[1] and not os.path.isdir(out) and not out.endswith(os.sep):
            out += ".npz"  # as np.savez names it
        check_output(out, "--out", (".npz",))
        device = choose_device(args.device)
        images = list_images(args.images)
        trained = load_trained_model(args.run, args.checkpoint)
        batch_size = args.batch_size or trained.spec.eval_bs
        if batch_size <= 0:
            raise ToolError(f"--batch_size must be positive, got {batch_size}")
        result = embed_to_file(trained, images, device, batch_size, args.num_workers)
        result.save(out)
        labelled = (f", {len(result.class_names)} classes from the subfolders"
                    if result.labels is not None else "")
        print(f"wrote {out}: {len(result.paths)} embeddings of dimension "
              f"{result.embeddings.shape[1]}{labelled} (device {device})")
        if len(result.skipped):
            print(f"skipped {len(result.skipped)} unreadable image(s):")
            for path, reason in zip(result.skipped, result.skipped_reasons):
                print(f"  {path}: {reason}")
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
