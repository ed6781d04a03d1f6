"""Shared fixtures.

``omniglot_root``: the real Omniglot "background small 1" data bundled with the repository
(``data/omniglot/``), unzipped once per test session into a temporary folder. It returns the
folder that holds ``images_background_small1/`` (136 classes ``<alphabet>/<characterNN>/``, 20
PNGs each), so ``--dataset folder --source <omniglot_root> --folder_name images_background_small1``
reads it.

``omniglot_cache``: an empty cache folder (``$XDG_CACHE_HOME``) for ``--dataset omniglot``, so
tests never write into the user's cache.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_ZIP_NAME = "images_background_small1.zip"
OMNIGLOT_TREE_NAME = "images_background_small1"
OMNIGLOT_CLASSES = 136
OMNIGLOT_IMAGES = 2720


OMNIGLOT_ZIP = REPO_ROOT / "data" / "omniglot" / OMNIGLOT_ZIP_NAME


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Every test starts with the thread count the session started with: float sums depend on
    it, so a count left behind by one test would change another's figures."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One intra-op thread for tests on tiny tensors: torch's thread pool only adds overhead
    there, and on a loaded 2-core machine its threads contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def opt():
    """The default command-line options (``parse_options([])``)."""
    from parameters import parse_options

    return parse_options([])


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the unzipped ``images_background_small1/`` (unzipped once per session)."""
    if not OMNIGLOT_ZIP.is_file():
        pytest.fail(f"the bundled Omniglot zip is missing: expected {OMNIGLOT_ZIP}")
    archive = OMNIGLOT_ZIP
    root = tmp_path_factory.mktemp("omniglot")
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(root)  # extractall drops absolute and '..' member paths
    tree = root / OMNIGLOT_TREE_NAME
    pngs = sum(1 for _ in tree.rglob("*.png")) if tree.is_dir() else 0
    if pngs != OMNIGLOT_IMAGES:
        pytest.fail(f"{archive} unzipped to {pngs} PNG files under {tree}; expected "
                    f"{OMNIGLOT_IMAGES} (is the zip damaged?)")
    return root


@pytest.fixture
def omniglot_cache(tmp_path, monkeypatch) -> Path:
    """A fresh ``$XDG_CACHE_HOME`` for ``--dataset omniglot`` (its zip is unpacked there)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture(scope="session")
def generated_folder(tmp_path_factory) -> Path:
    """8 classes of 14 images: a class-specific 5x5 glyph at a random place on strong noise, so
    the untrained network retrieves poorly and learning to ignore the noise pays. Every class
    draws its glyph in the same colour: only the glyph's shape tells the classes apart."""
    root = tmp_path_factory.mktemp("generated") / "glyphs"
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
