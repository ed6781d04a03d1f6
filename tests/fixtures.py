"""The one source of the tests' generated data and fast-run options (``conftest.py`` turns the
generators into fixtures; tests import the constants from here).

- ``FAST_RUN``: the options that make a ``main.py`` run take seconds on a CPU (small random-init
  network, tiny crop, no loader workers); tests add their own on top.
- ``write_glyph_folder`` / ``write_patch_folder``: generated class trees for ``--dataset folder``,
  from ``tools/smoke_data.py``, the one source of generated images (it also writes the published
  dataset layouts for SMOKE sweeps).
- ``torch_threads``: torch's thread count set for a block and restored after (float sums depend
  on it; module-scoped fixtures use it where the function-scoped ``single_thread`` cannot run).
- ``shared_file``: the only way a test reads the workplace's ``../shared`` folder (optional
  reference copies; a test using it must pass without it).
"""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import pytest

from tools.smoke_data import write_glyph_folder, write_patch_folder  # noqa: F401  (re-exported)

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


# ----------------------------------------------------------------------------- documented members
ARCHITECTURE_DOC = REPO_ROOT / "docs" / "ARCHITECTURE.md"


def documented_example(kind: str) -> str:
    """The ```python block that opens section ``### Example <kind> member`` of
    docs/ARCHITECTURE.md (the member contracts' examples, checked by the contract tests)."""
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    heading = f"\n### Example {kind} member\n"
    assert text.count(heading) == 1, f"{ARCHITECTURE_DOC} needs one section '{heading.strip()}'"
    block = re.match(r"\s*```python\n(.*?\n)```\n", text.split(heading, 1)[1], re.S)
    assert block, (f"section '{heading.strip()}' of {ARCHITECTURE_DOC} must open with a "
                   f"```python block")
    return block.group(1)


@contextlib.contextmanager
def dropped_in(package: ModuleType, stem: str, source: str, folder: Path) -> Iterator[ModuleType]:
    """``source`` imported as ``<package>/<stem>.py`` by the registry's own import_members, its
    registration made in a copy of the registry; registry, package and sys.modules are put back
    on exit."""
    folder.mkdir(parents=True)
    (folder / f"{stem}.py").write_text(source, encoding="utf-8")
    registry, name = package.REGISTRY, f"{package.__name__}.{stem}"
    assert name not in sys.modules, f"{name} exists already: pick another example name"
    with pytest.MonkeyPatch.context() as patch, registry.scoped():
        patch.setattr(package, "__path__", [*package.__path__, str(folder)])
        try:
            registry.import_members(package.__name__, [str(folder)])
            yield sys.modules[name]
        finally:
            sys.modules.pop(name, None)
            if hasattr(package, stem):
                delattr(package, stem)
