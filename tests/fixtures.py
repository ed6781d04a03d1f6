"""The one source of the tests' generated data and fast-run options (``conftest.py`` turns the
generators into fixtures; tests import the constants from here).

- ``FAST_RUN``: the options that make a ``main.py`` run take seconds on a CPU (small random-init
  network, tiny crop, no loader workers); tests add their own on top.
- ``write_glyph_folder`` / ``write_patch_folder``: generated class trees for ``--dataset folder``
  (``tools/smoke_data.py`` writes the published dataset layouts for SMOKE sweeps).
- ``torch_threads``: torch's thread count set for a block and restored after (float sums depend
  on it; module-scoped fixtures use it where the function-scoped ``single_thread`` cannot run).
- ``shared_file``: the only way a test reads the workplace's ``../shared`` folder (optional
  reference copies; a test using it must pass without it).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

OMNIGLOT_ZIP_NAME = "images_background_small1.zip"
OMNIGLOT_TREE_NAME = "images_background_small1"
OMNIGLOT_CLASSES = 136
OMNIGLOT_IMAGES = 2720
OMNIGLOT_ZIP = REPO_ROOT / "data" / "omniglot" / OMNIGLOT_ZIP_NAME

# A small random-init backbone at a 32-pixel crop, without loader workers.
FAST_RUN = ["--arch", "resnet18_normalize", "--not_pretrained", "--crop_size", "32",
            "--kernels", "0"]
DAS_ON = ["--embedding_producer_used", "--produce_type", "DAS"]


def shared_file(relative: str) -> Optional[Path]:
    """``../shared/<relative>`` when the workplace has it, else None."""
    path = SHARED / relative
    return path if path.is_file() else None


def write_glyph_folder(root: Path) -> Path:
    """8 classes of 14 images: a class-specific 5x5 glyph at a random place on strong noise, so
    the untrained network retrieves poorly and learning to ignore the noise pays. Every class
    draws its glyph in the same colour: only the glyph's shape tells the classes apart."""
    rng = np.random.default_rng(0)
    for c in range(8):
        glyph = rng.random((5, 5)) > 0.5
        rng.integers(60, 255, size=3)  # unused draw: keeps the glyphs and noise of earlier runs
        colour = np.array([230, 230, 230])
        os.makedirs(root / f"class_{c:02d}")
        for i in range(14):
            image = rng.integers(0, 160, size=(40, 40, 3)).astype(np.uint8)
            big = np.kron(glyph, np.ones((5, 5), dtype=bool))
            y, x = rng.integers(0, 15, size=2)
            image[y:y + 25, x:x + 25][big] = colour
            Image.fromarray(image).save(root / f"class_{c:02d}" / f"{i}.png")
    return root


def write_patch_folder(root: Path, classes: int = 12, per_class: int = 4) -> Path:
    """``classes`` x ``per_class`` images of 16x16 noise with a class colour patch."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(root / f"c{c}")
        colour = rng.integers(0, 255, size=3)
        for i in range(per_class):
            image = rng.integers(0, 255, size=(16, 16, 3)).astype(np.uint8)
            image[4:12, 4:12] = colour
            Image.fromarray(image).save(root / f"c{c}" / f"{i}.png")
    return root


class FixedMiner:
    """A miner that returns the tuples it was given, whatever the batch: criteria tests feed the
    same tuples to the vectorized code and to a loop oracle, free of the miners' randomness."""

    registry_name = "fixed"

    def __init__(self, tuples):
        self.tuples = tuples
        self.stats = {}

    def __call__(self, embeddings, labels, distances=None):
        return self.tuples


def stop_after(steps: int) -> type:
    """A ``main.StopRequest`` whose stop request arrives after ``steps`` training steps, as a
    SIGTERM would (train_one_epoch looks at it twice per step); patch it over main.StopRequest."""
    import main

    class StopAfter(main.StopRequest):
        def __init__(self) -> None:
            super().__init__()
            self._checks = 0
            self.signal_name = "SIGTERM"

        @property
        def requested(self) -> bool:
            self._checks += 1
            return self._checks > 2 * steps

        @requested.setter
        def requested(self, value) -> None:  # StopRequest.__init__ sets it
            pass

    return StopAfter


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count is ``count`` inside the block and restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
