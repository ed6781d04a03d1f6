"""Time ``python -m tools.embed`` against ``evaluation.compute_embeddings`` on the same images.

Both embed the same generated image folder with the same network, transform, batch size and
worker count, on the CPU: ``tools.embed`` as a user runs it (``tools.embed.main``: listing the
folder, loading the run from its checkpoint, embedding with unreadable-image tolerance, writing
the ``.npz``), and ``compute_embeddings`` on an ``ImageDataset`` of those images (what the
evaluation after each epoch runs). They alternate, and the medians are compared. Goal: ratio
<= 1.2 (tools.embed goes through compute_embeddings itself).

    python bench/embed_compare.py            # or: python -m bench.embed_compare
    python -m bench.embed_compare --images 512 --arch resnet50_normalize --crop_size 224

The last line is ``embed_tool_s=<a> compute_embeddings_s=<b> ratio=<a/b>`` (medians); the
line before compares the fastest runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image


def make_images(root: str, count: int, size: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = os.path.join(root, f"class_{index % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size, size * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:05d}.jpg"), quality=90)


def make_run(folder: str, arch: str, embed_dim: int, crop_size: int, batch_size: int) -> None:
    """A run folder as main.py leaves it, with a randomly initialised network."""
    from parameters import parse_options
    from training.build import build_network
    from utilities.checkpoint import save_checkpoint
    from utilities.run_folder import LAST_CHECKPOINT, write_config

    os.makedirs(folder)
    spec = parse_options(["--dataset", "folder", "--arch", arch, "--embed_dim", str(embed_dim),
                          "--crop_size", str(crop_size), "--augmentation", "base",
                          "--eval_bs", str(batch_size), "--not_pretrained"])
    model = build_network(spec, pretrained=False)
    save_checkpoint({"epoch": 1, "network": {"arch": arch, "embed_dim": embed_dim,
                                             "state_dict": model.state_dict()}},
                    os.path.join(folder, LAST_CHECKPOINT))
    write_config(folder, spec.to_config())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="Generated images.")
    parser.add_argument("--image_size", type=int, default=160, help="Their height in pixels.")
    parser.add_argument("--arch", default="resnet18_normalize")
    parser.add_argument("--embed_dim", type=int, default=128)
    parser.add_argument("--crop_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each side.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from datasets import ImageDataset, Split
    from evaluation import compute_embeddings
    from tools import embed as embed_tool
    from tools._common import list_images
    from tools._trained_model import load_trained_model

    with tempfile.TemporaryDirectory() as work:
        images_dir, run_dir = os.path.join(work, "images"), os.path.join(work, "run")
        make_images(images_dir, args.images, args.image_size)
        make_run(run_dir, args.arch, args.embed_dim, args.crop_size, args.batch_size)
        out = os.path.join(work, "embeddings.npz")
        command = [run_dir, "--images", images_dir, "--out", out, "--device", "cpu",
                   "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers)]

        listed = list_images(images_dir)
        trained = load_trained_model(run_dir)
        dataset = ImageDataset(Split(listed.paths, listed.labels, listed.class_names),
                               trained.transform)

        def run_tool() -> None:
            with open(os.devnull, "w") as quiet:
                stdout, sys.stdout = sys.stdout, quiet
                try:
                    assert embed_tool.main(command) == 0
                finally:
                    sys.stdout = stdout

        def run_reference() -> np.ndarray:
            return compute_embeddings(trained.model, dataset, "cpu", args.batch_size,
                                      args.num_workers)[0]

        run_reference()  # warm-up: first-call costs (thread pools, allocator) on neither side
        tool_times, reference_times = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run_tool()
            tool_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            expected = run_reference()
            reference_times.append(time.perf_counter() - started)
        written = np.load(out)["embeddings"]
        difference = float(np.abs(written - expected).max())

    tool_s, reference_s = statistics.median(tool_times), statistics.median(reference_times)
    print(f"images={args.images} arch={args.arch} crop={args.crop_size} bs={args.batch_size} "
          f"workers={args.num_workers} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"tools.embed runs (s): {' '.join(f'{t:.2f}' for t in tool_times)}; "
          f"compute_embeddings runs (s): {' '.join(f'{t:.2f}' for t in reference_times)}; "
          f"max abs difference of the embeddings: {difference:.2g}")
    # On a machine loaded by other work the fastest run is the least disturbed one.
    print(f"fastest runs: embed_tool_s={min(tool_times):.3f} "
          f"compute_embeddings_s={min(reference_times):.3f} "
          f"ratio={min(tool_times) / min(reference_times):.3f}")
    print(f"embed_tool_s={tool_s:.3f} compute_embeddings_s={reference_s:.3f} "
          f"ratio={tool_s / reference_s:.3f}")


if __name__ == "__main__":
    main()
