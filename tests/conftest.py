"""Shared fixtures (the data and options behind them live in tests/fixtures.py).

``omniglot_root``: the real Omniglot "background small 1" data bundled with the repository
(``data/omniglot/``), unzipped once per test session into a temporary folder. It returns the
folder that holds ``images_background_small1/`` (136 classes ``<alphabet>/<characterNN>/``, 20
PNGs each), so ``--dataset folder --source <omniglot_root> --folder_name images_background_small1``
reads it.

``omniglot_cache``: an empty cache folder (``$XDG_CACHE_HOME``) for ``--dataset omniglot``, so
tests never write into the user's cache.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.fixtures import (OMNIGLOT_IMAGES, OMNIGLOT_TREE_NAME, OMNIGLOT_ZIP, REPO_ROOT,  # noqa: F401
                            torch_threads, write_glyph_folder, write_patch_folder)


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
    with torch_threads(1):
        yield


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
    return write_glyph_folder(tmp_path_factory.mktemp("generated") / "glyphs")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """12 classes x 4 images of 16x16 noise with a class colour patch (half the classes train)."""
    return write_patch_folder(tmp_path_factory.mktemp("criteria_main") / "tiny")
