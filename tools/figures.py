"""Figures of trained runs, as PNG files (matplotlib).

    python -m tools.figures curves RUN_DIR [RUN_DIR ...]          # metrics and loss by epoch
    python -m tools.figures retrieval RUN_DIR [RUN_DIR2] --random 6 --top_k 5
    python -m tools.figures retrieval BASELINE_RUN DAS_RUN --queries 12 345 678
    python -m tools.figures embedding RUN_DIR --method tsne         # or pca
    python -m tools.figures frequency RUN_DIR [--max_classes 48]     # DAS's DFS counter

``curves`` reads ``metrics.csv`` only: test Recall@K, NMI (and F1, MAP@R when logged) and the
training loss over the epochs, several runs overlaid, the best epoch marked. ``retrieval`` and
``embedding`` rebuild the network from the run's checkpoint (``--checkpoint last`` or ``best``)
and embed the evaluation split of the run's dataset, read from the run's ``--source`` (or
``--source`` here, when the data has moved):

* ``retrieval``: each query (``--queries`` = indices into the split, or ``--random N``) and its
  top-k neighbours, each framed green when of the query's class and red when not; with two runs
  each query gets one row per run, so baseline and + DAS can be compared on the same queries.
* ``embedding``: a 2-D t-SNE or PCA (scikit-learn) of the split's embeddings, one colour per class
  (at most ``--max_classes`` classes, drawn at random when there are more).

* ``frequency``: the paper's frequency-matrix figure: DFS's class-by-dimension counter saved by
  ``--das_save_frequency_epochs`` (``das_frequency_epoch<N>.npy``, each row divided by its
  maximum), one heatmap per saved epoch side by side, classes as rows, dimensions as columns
  ordered by the last saved epoch's total count (most counted first), colour scale 0-1.

Each command writes into the first run folder unless ``--out`` says otherwise, prints the path
and exits 2 with a one-line message on bad input (no checkpoint, data not found, bad index).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import faiss
import numpy as np
import torch
from PIL import Image

from das import figure as das_figure
from datasets import DataError, ImageDataset, QueryGallery
from datasets._decode import load_image
from evaluation import compute_embeddings
from parameters import RunSpec
from tools._common import atomic_output, check_loader, check_output, check_seed, mark_png
from tools._trained_model import load_trained_model
from utilities import run_folder as rf
from utilities.device import choose_device
from utilities.errors import run_command
from utilities.plotting import DPI, FigureError, pyplot, save_figure

CURVES_FIGSIZE = (15.0, 4.2)  # inches: 1500 x 420 pixels at DPI
EMBEDDING_FIGSIZE = (8.0, 8.0)  # 800 x 800 pixels
GREEN = (0, 170, 60)
RED = (220, 30, 30)
QUERY_FRAME = (40, 40, 40)
UNKNOWN = (150, 150, 150)  # neighbour frame when the labels are not known
CELL_GAP = 4  # pixels between thumbnails
QUERY_GAP = 16  # extra pixels between the query column and its neighbours
GROUP_GAP = 14  # extra pixels between the rows of two queries, when two runs are stacked
LABEL_WIDTH = 190  # left margin for the row labels
HEADER_HEIGHT = 34  # top margin for the column titles
# Upper bounds checked before any work, so that a figure's pixels fit in memory (a 64-query,
# 2-run, top-50 grid of 512-pixel thumbnails is about 26000 x 67000 pixels, 5 GB of RGB).
MAX_THUMB = 512
MAX_QUERIES = 64
MAX_TOP_K = 50
MAX_POINTS = 100000  # t-SNE / PCA points


# ----------------------------------------------------------------------------- curves
def read_curves(folder: str) -> rf.RunRecord:
    """The run's config and metric rows (by epoch), through the shared run-folder reader."""
    path = os.path.join(folder, rf.METRICS_FILE)
    if not os.path.isfile(path):
        raise FigureError(f"'{folder}' holds no metrics.csv; expected a run folder written by "
                          f"main.py")
    try:
        run = rf.read_run(folder)
    except ValueError as error:  # a damaged config.json or metrics.csv, named
        raise FigureError(f"run folder '{folder}': {error}") from None
    run.rows = sorted((r for r in run.rows if r.get("epoch") is not None),
                      key=lambda r: r["epoch"])
    if not run.rows:
        raise FigureError(f"'{path}' has no epoch rows yet")
    return run


def _series(rows, key: str) -> Tuple[np.ndarray, np.ndarray]:
    points = [(r["epoch"], r[key]) for r in rows
              if r.get(key) is not None and not np.isnan(r[key])]
    if not points:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*points)
    return np.asarray(epochs), np.asarray(values)


def _marker(epochs: np.ndarray) -> Optional[str]:
    """Dots on short curves, so that a run of one or a few epochs still shows."""
    return "o" if len(epochs) <= 30 else None


def _recall_keys(rows, split: str) -> List[str]:
    keys = {k for r in rows for k in r if k.startswith(f"{split}/recall@")}
    return sorted(keys, key=lambda k: int(k.rsplit("@", 1)[1]))


def plot_curves(folders: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                split: str = "test") -> str:
    """Recall@K, clustering metrics and loss per epoch of one or more runs, in one PNG; a dotted
    line marks each run's best epoch by its own ``--storage_metric`` (as checkpoint_best.pth)."""
    plt = pyplot()
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(f)) for f in folders]
    if len(labels) != len(folders):
        raise FigureError(f"--labels gives {len(labels)} label(s) for {len(folders)} run(s)")
    runs = [(label, read_curves(folder)) for label, folder in zip(labels, folders)]
    for label, run in runs:
        present = sorted({key.split("/", 1)[0] for row in run.rows for key in row
                          if key.startswith(("test/", "val/", "train/"))
                          and row.get(key) is not None})
        if split not in present:
            raise FigureError(f"--split {split}: run '{run.folder}' logged no {split}/ metrics; "
                              f"it has {', '.join(present) or 'no split'}")
    fig, axes = plt.subplots(1, 3, figsize=CURVES_FIGSIZE, dpi=DPI)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    selection_keys = set()
    for index, (label, run) in enumerate(runs):
        rows = run.rows
        colour = colours[index % len(colours)]
        prefix = f"{label}: " if len(runs) > 1 else ""
        for k_index, key in enumerate(_recall_keys(rows, split)):
            epochs, values = _series(rows, key)
            axes[0].plot(epochs, 100 * values, styles[k_index % len(styles)], color=colour,
                         marker=_marker(epochs), label=f"{prefix}R@{key.rsplit('@', 1)[1]}")
        for m_index, (key, title) in enumerate([("nmi", "NMI"), ("f1", "F1"), ("map@r", "MAP@R")]):
            epochs, values = _series(rows, f"{split}/{key}")
            if len(epochs):
                axes[1].plot(epochs, 100 * values, styles[m_index], color=colour,
                             marker=_marker(epochs), label=f"{prefix}{title}")
        epochs, values = _series([r for r in rows if r["epoch"] >= 1], "loss")
        axes[2].plot(epochs, values, "-", color=colour, marker=_marker(epochs), label=label)
        best = run.pick("best")
        if best is not None:
            selection_keys.add(run.selection_key)
            for axis in axes[:2]:
                axis.axvline(best["epoch"], color=colour, linestyle=":", linewidth=1)
    axes[0].set_title(f"{split} Recall@K (%); dotted: best epoch by "
                      f"{', '.join(sorted(selection_keys))}", fontsize=9)
    axes[1].set_title(f"{split} clustering and MAP@R (%)", fontsize=9)
    axes[2].set_title("training loss (epoch mean)", fontsize=9)
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.13, top=0.9, wspace=0.18)
    save_figure(fig, out)
    return out


# ----------------------------------------------------------------------------- loading a run
@dataclass
class LoadedRun:
    """A run's network (eval mode, on ``device``) and its evaluation split."""

    folder: str
    label: str
    spec: RunSpec  # the run's options (config.json)
    model: object
    transform: object
    queries: object  # datasets Split: the images searched for
    references: object  # the images searched among (== queries for a single split)

    @property
    def self_retrieval(self) -> bool:
        return self.queries is self.references


def load_run(folder: str, checkpoint: str = "last", split: str = "test",
             source: Optional[str] = None, label: Optional[str] = None) -> LoadedRun:
    """Rebuild the network of ``folder`` from its checkpoint and parse its dataset."""
    trained = load_trained_model(folder, checkpoint)
    splits = trained.splits(source)  # as main.py built them (training.build.load_run_data)
    if split not in splits.evaluation:
        raise FigureError(f"--split '{split}' is not an evaluation split of run '{folder}'; it has "
                          f"{', '.join(splits.evaluation)}")
    evaluation_split = splits.evaluation[split]
    if isinstance(evaluation_split, QueryGallery):
        queries, references = evaluation_split
    else:
        queries = references = evaluation_split
    label = label or os.path.basename(os.path.normpath(folder))
    return LoadedRun(folder, label, trained.spec, trained.model, trained.transform, queries,
                     references)


def embed(run: LoadedRun, split, device: str, batch_size: int, num_workers: int) -> np.ndarray:
    run.model.to(torch.device(device))
    embeddings, _ = compute_embeddings(run.model, ImageDataset(split, run.transform), device,
                                       batch_size, num_workers)
    return embeddings


# ----------------------------------------------------------------------------- retrieval
def nearest(references: np.ndarray, queries: np.ndarray, k: int,
            own_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """Ids of each query's k nearest references (exact L2, faiss), its own id left out."""
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(np.ascontiguousarray(references, dtype=np.float32))
    extra = 0 if own_ids is None else 1
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32),
                          min(k + extra, len(references)))
    if own_ids is None:
        return ids[:, :k]
    kept = [row[row != own][:k] for row, own in zip(ids, own_ids)]
    return np.stack(kept)


def thumbnail(source, size: int, frame: Optional[Tuple[int, int, int]] = None) -> np.ndarray:
    """A square ``size`` x ``size`` RGB thumbnail (centre crop), with a coloured frame."""
    image = load_image(source)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8).copy()
    if frame is not None:
        width = max(2, size // 16)
        pixels[:width], pixels[-width:] = frame, frame
        pixels[:, :width], pixels[:, -width:] = frame, frame
    return pixels


def grid_pixels(n_queries: int, n_runs: int, top_k: int, thumb: int) -> Tuple[int, int]:
    """``(width, height)`` in pixels of a retrieval figure."""
    rows = n_queries * n_runs
    width = LABEL_WIDTH + (top_k + 1) * thumb + top_k * CELL_GAP + QUERY_GAP
    height = HEADER_HEIGHT + rows * thumb + (rows - 1) * CELL_GAP
    if n_runs > 1:
        height += (n_queries - 1) * GROUP_GAP
    return width, height


@dataclass
class RetrievalGrid:
    """The picture and what it shows: ``neighbours[q][r]`` ids, ``matches[q][r]`` booleans."""

    image: np.ndarray
    neighbours: np.ndarray  # (queries, runs, k)
    matches: np.ndarray  # (queries, runs, k)
    row_labels: List[str]
    row_tops: List[int]


def retrieval_grid(runs: Sequence[LoadedRun], query_ids: Sequence[int], top_k: int, thumb: int,
                   device: str, batch_size: int = 64, num_workers: int = 0) -> RetrievalGrid:
    """Embed every run's split, find the top-k of each query, and compose the thumbnails."""
    first = runs[0]
    for run in runs[1:]:
        same_queries = list(map(str, run.queries.images)) == list(map(str, first.queries.images))
        same_references = (list(map(str, run.references.images))
                           == list(map(str, first.references.images)))
        if not (same_queries and same_references):
            raise FigureError(f"runs '{first.folder}' and '{run.folder}' evaluate different images "
                              f"(dataset {first.spec.dataset} vs {run.spec.dataset}); "
                              f"stack runs of the same dataset and split")
    query_ids = np.asarray(query_ids, dtype=np.int64)
    neighbours = np.zeros((len(query_ids), len(runs), top_k), dtype=np.int64)
    for r, run in enumerate(runs):
        references = embed(run, run.references, device, batch_size, num_workers)
        if run.self_retrieval:
            queries = references[query_ids]
            own = query_ids
        else:
            queries = embed(run, run.queries, device, batch_size, num_workers)[query_ids]
            own = None
        neighbours[:, r] = nearest(references, queries, top_k, own)
    query_labels = first.queries.labels[query_ids]
    matches = first.references.labels[neighbours] == query_labels[:, None, None]

    row_labels = [f"{run.label}\nquery {query}" if len(runs) > 1 else f"query {query}"
                  for query in query_ids for run in runs]
    image, row_tops = compose_grid([first.queries.images[q] for q in query_ids],
                                   first.references.images, neighbours, matches, thumb)
    return RetrievalGrid(image, neighbours, matches, row_labels, row_tops)


def compose_grid(query_images: Sequence, reference_images: Sequence, neighbours: np.ndarray,
                 matches: Optional[np.ndarray], thumb: int) -> Tuple[np.ndarray, List[int]]:
    """The thumbnails of a retrieval figure: per query, one row per run (``neighbours[q, r]``
    are ids into ``reference_images``), each neighbour framed green/red by ``matches``, or grey
    when ``matches`` is None (labels unknown). Returns the pixels and each row's top."""
    n_queries, n_runs, top_k = neighbours.shape
    width, height = grid_pixels(n_queries, n_runs, top_k, thumb)
    image = np.full((height - HEADER_HEIGHT, width - LABEL_WIDTH, 3), 255, dtype=np.uint8)
    row_tops = []
    top = 0
    for q in range(n_queries):
        query_picture = thumbnail(query_images[q], thumb, QUERY_FRAME)
        for r in range(n_runs):
            image[top:top + thumb, :thumb] = query_picture
            left = thumb + QUERY_GAP
            for rank in range(top_k):
                if matches is None:
                    colour = UNKNOWN
                else:
                    colour = GREEN if matches[q, r, rank] else RED
                picture = thumbnail(reference_images[neighbours[q, r, rank]], thumb, colour)
                image[top:top + thumb, left:left + thumb] = picture
                left += thumb + CELL_GAP
            row_tops.append(top)
            top += thumb + CELL_GAP
        top += GROUP_GAP if n_runs > 1 else 0
    return image, row_tops


def plot_retrieval(folders: Sequence[str], out: str, queries: Optional[Sequence[int]] = None,
                   n_random: int = 4, top_k: int = 5, thumb: int = 96, seed: int = 0,
                   checkpoint: str = "last", split: str = "test", source: Optional[str] = None,
                   labels: Optional[Sequence[str]] = None, device: Optional[str] = None,
                   batch_size: int = 64, num_workers: int = 0) -> str:
    """Top-k retrieval of chosen or random queries, for one run or two stacked."""
    if not 1 <= len(folders) <= 2:
        raise FigureError(f"retrieval takes one run folder or two to compare, got {len(folders)}")
    if labels and len(labels) != len(folders):
        raise FigureError(f"--labels gives {len(labels)} label(s) for {len(folders)} run(s)")
    if not (1 <= top_k <= MAX_TOP_K and 16 <= thumb <= MAX_THUMB):
        raise FigureError(f"--top_k must be in 1..{MAX_TOP_K} and --thumb in 16..{MAX_THUMB} "
                          f"(got {top_k}, {thumb})")
    if queries and len(queries) > MAX_QUERIES or not queries and not 1 <= n_random <= MAX_QUERIES:
        raise FigureError(f"at most {MAX_QUERIES} queries per figure (--queries, --random)")
    runs = [load_run(folder, checkpoint, split, source, labels[i] if labels else None)
            for i, folder in enumerate(folders)]
    n_images = len(runs[0].queries)
    available = len(runs[0].references) - (1 if runs[0].self_retrieval else 0)
    if top_k > available:
        raise FigureError(f"--top_k {top_k} exceeds the {available} images a query can retrieve")
    if queries:
        bad = [q for q in queries if not 0 <= q < n_images]
        if bad:
            raise FigureError(f"--queries {bad[0]} is out of range: the {split} split of "
                              f"'{folders[0]}' has {n_images} query images (0..{n_images - 1})")
        query_ids = list(queries)
    else:
        if n_random < 1:
            raise FigureError(f"--random must be at least 1, got {n_random}")
        rng = np.random.default_rng(seed)
        query_ids = sorted(rng.choice(n_images, min(n_random, n_images), replace=False).tolist())
    grid = retrieval_grid(runs, query_ids, top_k, thumb, device or str(choose_device()), batch_size,
                          num_workers)

    title = (f"top-{top_k} retrieval, {split} split of {runs[0].spec.dataset}\n"
             f"green: same class, red: other class")
    draw_grid(grid.image, grid.row_labels, grid.row_tops, top_k, thumb, title, out)
    return out


def draw_grid(image: np.ndarray, row_labels: Sequence[str], row_tops: Sequence[int], top_k: int,
              thumb: int, title: str, out: str) -> None:
    """Save the thumbnails of :func:`compose_grid` with the title, column titles and row labels."""
    plt = pyplot()
    height = image.shape[0] + HEADER_HEIGHT
    width = image.shape[1] + LABEL_WIDTH
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axis = fig.add_axes([LABEL_WIDTH / width, 0, 1 - LABEL_WIDTH / width,
                         1 - HEADER_HEIGHT / height])
    axis.imshow(image, interpolation="nearest")
    axis.set_axis_off()
    fig.text(4 / width, 1 - 6 / height, title, fontsize=8, va="top")
    column_left = LABEL_WIDTH
    for column in range(top_k + 1):
        heading = "query" if column == 0 else f"{column}"
        fig.text((column_left + thumb / 2) / width, 1 - (HEADER_HEIGHT - 8) / height, heading,
                 ha="center", fontsize=9)
        column_left += thumb + (QUERY_GAP if column == 0 else CELL_GAP)
    for text, top in zip(row_labels, row_tops):
        fig.text((LABEL_WIDTH - 8) / width, 1 - (HEADER_HEIGHT + top + thumb / 2) / height, text,
                 ha="right", va="center", fontsize=8)
    save_figure(fig, out)


# ----------------------------------------------------------------------------- embedding
def project(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates by PCA or t-SNE (scikit-learn)."""
    if method == "pca":
        from sklearn.decomposition import PCA  # slow imports, only for this figure

        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(1.0, (len(embeddings) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        # Up to a few thousand points one thread is fastest: on a busy CPU the OpenMP threads
        # of the Barnes-Hut gradient spin against each other (0.2 s vs 37 s for 48 points here).
        with threadpool_limits(1 if len(embeddings) <= 10000 else None):
            return tsne.fit_transform(embeddings)
    raise FigureError(f"--method must be tsne or pca, got '{method}'")


def choose_points(labels: np.ndarray, max_classes: int, max_points: int,
                  seed: int) -> np.ndarray:
    """Indices of the points to draw: all of at most ``max_classes`` classes (random ones when
    there are more), then at most ``max_points`` of them."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) > max_classes:
        classes = np.sort(rng.choice(classes, max_classes, replace=False))
    chosen = np.flatnonzero(np.isin(labels, classes))
    if len(chosen) > max_points:
        chosen = np.sort(rng.choice(chosen, max_points, replace=False))
    return chosen


def plot_embedding(folder: str, out: str, method: str = "tsne", max_classes: int = 20,
                   max_points: int = 2000, seed: int = 0, checkpoint: str = "last",
                   split: str = "test", source: Optional[str] = None,
                   device: Optional[str] = None, batch_size: int = 64,
                   num_workers: int = 0) -> str:
    """2-D projection of a run's evaluation embeddings, coloured by class."""
    if method not in ("tsne", "pca"):
        raise FigureError(f"--method must be tsne or pca, got '{method}'")
    if max_classes < 1 or not 3 <= max_points <= MAX_POINTS:
        raise FigureError(f"--max_classes must be >= 1 and --max_points in 3..{MAX_POINTS} (got "
                          f"{max_classes}, {max_points})")
    run = load_run(folder, checkpoint, split, source)
    device = device or str(choose_device())
    parts = [run.queries] if run.self_retrieval else [run.queries, run.references]
    embeddings = np.concatenate([embed(run, part, device, batch_size, num_workers)
                                 for part in parts])
    labels = np.concatenate([part.labels for part in parts])
    names = parts[0].class_names
    chosen = choose_points(labels, max_classes, max_points, seed)
    if len(chosen) < 3:
        raise FigureError(f"only {len(chosen)} embeddings to project; need at least 3")
    points = project(embeddings[chosen], method, seed)

    plt = pyplot()
    fig, axis = plt.subplots(figsize=EMBEDDING_FIGSIZE, dpi=DPI)
    cmap = plt.get_cmap("tab20")
    classes = np.unique(labels[chosen])
    for index, label in enumerate(classes):
        mask = labels[chosen] == label
        axis.scatter(points[mask, 0], points[mask, 1], s=12, color=cmap(index % 20),
                     label=str(names[label])[:24] if label < len(names) else str(label))
    axis.set_title(f"{'t-SNE' if method == 'tsne' else 'PCA'} of {len(chosen)} {split} embeddings, "
                   f"{len(classes)} classes\n{run.label} ({checkpoint} checkpoint)", fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])
    if len(classes) <= 20:
        axis.legend(fontsize=6, loc="best", markerscale=1.5, ncol=2 if len(classes) > 10 else 1)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.92)
    save_figure(fig, out)
    return out


def _default_out(folders: Sequence[str], stem: str) -> str:
    name = stem
    if len(folders) > 1:
        name += "".join(f"_vs_{os.path.basename(os.path.normpath(f))}" for f in folders[1:])
    return os.path.join(folders[0], name + ".png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.figures",
                                     description="Figures of trained runs (PNG).")
    commands = parser.add_subparsers(dest="command", required=True)

    curves = commands.add_parser("curves", help="test Recall@K, NMI and loss over epochs")
    curves.add_argument("runs", nargs="+", help="Run folder(s); several are overlaid.")
    curves.add_argument("--split", default="test", help="Evaluation split (test, val).")

    def model_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--checkpoint", default="last", choices=["last", "best"])
        sub.add_argument("--split", default="test", help="Evaluation split (test, val).")
        sub.add_argument("--source", default=None,
                         help="Data folder, when it is no longer where the run read it.")
        sub.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any).")
        sub.add_argument("--batch_size", type=int, default=64)
        sub.add_argument("--num_workers", type=int, default=0)
        sub.add_argument("--seed", type=int, default=0, help="Seeds random queries/classes.")

    retrieval = commands.add_parser("retrieval", help="query and top-k grid, 1 or 2 runs stacked")
    retrieval.add_argument("runs", nargs="+", help="One run folder, or two to compare.")
    retrieval.add_argument("--queries", type=int, nargs="+", default=None,
                           help="Indices of query images in the split (default: --random).")
    retrieval.add_argument("--random", type=int, default=4, help="Number of random queries.")
    retrieval.add_argument("--top_k", type=int, default=5)
    retrieval.add_argument("--thumb", type=int, default=96, help="Thumbnail side in pixels.")
    model_options(retrieval)

    embedding = commands.add_parser("embedding", help="2-D t-SNE/PCA of embeddings by class")
    embedding.add_argument("runs", nargs=1, help="Run folder.")
    embedding.add_argument("--method", default="tsne", choices=["tsne", "pca"])
    embedding.add_argument("--max_classes", type=int, default=20)
    embedding.add_argument("--max_points", type=int, default=2000)
    model_options(embedding)

    frequency = commands.add_parser("frequency", help="DAS's DFS counter by class and dimension")
    frequency.add_argument("runs", nargs=1, help="Run folder with das_frequency_epoch<N>.npy.")
    frequency.add_argument("--max_classes", type=int, default=48,
                           help="Rows drawn (the first classes; the paper shows 48).")

    for sub in (curves, retrieval):
        sub.add_argument("--labels", nargs="+", default=None, help="One label per run.")
    for sub in (curves, retrieval, embedding, frequency):
        sub.add_argument("--out", default=None, help="PNG path (default: in the first run folder).")
    return parser


def draw(args: argparse.Namespace, out: str) -> None:
    """Draw the figure ``args.command`` asks for into the file ``out``."""
    if args.command == "curves":
        plot_curves(args.runs, out, args.labels, args.split)
    elif args.command == "frequency":
        das_figure.plot_frequency(args.runs[0], out, args.max_classes)
    elif args.command == "retrieval":
        plot_retrieval(args.runs, out, args.queries, args.random, args.top_k, args.thumb,
                       args.seed, args.checkpoint, args.split, args.source, args.labels,
                       args.device, args.batch_size, args.num_workers)
    else:
        plot_embedding(args.runs[0], out, args.method, args.max_classes, args.max_points,
                       args.seed, args.checkpoint, args.split, args.source, args.device,
                       args.batch_size, args.num_workers)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    stem = {"curves": "curves", "frequency": "frequency", "retrieval": "retrieval",
            "embedding": f"embedding_{getattr(args, 'method', '')}"}[args.command]

    def command() -> int:
        for folder in args.runs:
            if not os.path.isdir(folder):
                raise FigureError(f"run folder '{folder}' does not exist")
        check_seed(getattr(args, "seed", 0))
        check_loader(getattr(args, "batch_size", None), getattr(args, "num_workers", 0))
        out = check_output(args.out or _default_out(args.runs, stem), "--out", (".png",))
        try:
            with atomic_output(out) as temporary:
                draw(args, temporary)
                mark_png(temporary, f"tools.figures {args.command}")
        except DataError as error:
            raise FigureError(f"{error.short_message()} (pass --source if the data has moved)"
                              ) from None
        print(out)
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
