"""The paper's frequency-matrix figure: DFS's class-by-dimension counter over training.

``--das_save_frequency_epochs`` saves ``das_frequency_epoch<N>.npy`` (each class's row divided by
its maximum) after the chosen epochs; :func:`plot_frequency` draws one heatmap per saved epoch side
by side, classes as rows, dimensions as columns ordered by the last saved epoch's total count (most
counted first), colour scale 0-1. Command: ``python -m tools.figures frequency RUN_DIR``.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from utilities.plotting import FigureError, pyplot, save_figure

from .sampling import DenselyAnchoredSampling

FREQUENCY_PATTERN = "das_frequency_epoch"
FREQUENCY_FILE = FREQUENCY_PATTERN + "{}.npy"


def save_frequency_if_due(das: Optional[DenselyAnchoredSampling], epoch: int,
                          epochs: Sequence[int], folder: str) -> Optional[str]:
    """After epoch ``epoch`` (1-based), save ``das.normalized_frequency()`` as
    ``<folder>/das_frequency_epoch<epoch>.npy`` when ``epoch`` is in
    ``--das_save_frequency_epochs``; returns the path written, or None."""
    if das is None or epoch not in epochs:
        return None
    path = os.path.join(folder, FREQUENCY_FILE.format(epoch))
    np.save(path, das.normalized_frequency().cpu().numpy())
    return path


def frequency_files(folder: str) -> List[Tuple[int, str]]:
    """``(epoch, path)`` of the run's saved DFS counters, by epoch."""
    if not os.path.isdir(folder):
        raise FigureError(f"'{folder}' is not a run folder")
    found = []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext == ".npy" and stem.startswith(FREQUENCY_PATTERN):
            number = stem[len(FREQUENCY_PATTERN):]
            if number.isdigit():
                found.append((int(number), os.path.join(folder, name)))
    if not found:
        raise FigureError(f"'{folder}' holds no {FREQUENCY_PATTERN}<N>.npy; train with "
                          f"--embedding_producer_used --das_save_frequency_epochs N ...")
    return sorted(found)


def dimension_order(last: np.ndarray) -> np.ndarray:
    """Columns by decreasing total over the classes of the last epoch's matrix (ties: lower
    dimension first)."""
    return np.argsort(-last.sum(axis=0), kind="stable")


def plot_frequency(folder: str, out: str, max_classes: int = 48) -> str:
    """Heatmaps of the saved normalized DFS counters, side by side (see the module docstring)."""
    files = frequency_files(folder)
    matrices = [np.load(path) for _, path in files]
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise FigureError(f"the frequency matrices of '{folder}' differ in shape or are not "
                          f"2-D: {sorted(shapes)}")
    order = dimension_order(matrices[-1])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(5.0 * len(matrices) + 1.0, 4.5),
                             squeeze=False)
    image = None
    for ax, (epoch, _), matrix in zip(axes[0], files, matrices):
        image = ax.imshow(matrix[:max_classes, order], aspect="auto", cmap="jet", vmin=0.0,
                          vmax=1.0, interpolation="nearest")
        ax.set_title(f"epoch {epoch}")
        ax.set_xlabel("dimension (by last epoch's count)")
        ax.set_ylabel("class")
    fig.colorbar(image, ax=list(axes[0]), fraction=0.02)
    save_figure(fig, out)
    return out
