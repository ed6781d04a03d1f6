"""Search an embedded gallery with query images (or embeddings): top-k paths and scores.

    python -m tools.search --gallery gallery.npz --query photo.jpg --run RUN_DIR -k 10
    python -m tools.search --gallery gallery.npz --query queries.npz --out top10.csv \
        --figure top10.png

The gallery is an ``.npz`` written by ``tools.embed``. Queries are an ``.npz`` of the same kind,
or an image, folder or list file embedded here with ``--run``'s network (its test transform).
The index is an exact faiss flat index: inner product (cosine similarity, higher is nearer) when
both sides are L2-normalized, as a ``normalize`` arch gives, where it ranks exactly as the run's
L2 evaluation does; squared L2 distance (lower is nearer) otherwise. A gallery image with the
query's own path is left out (``--keep_self`` keeps it), as the evaluation leaves a query out.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import List, Optional, Tuple

import numpy as np

from tools._common import (EmbeddingFile, ToolError, atomic_output, check_loader, check_output,
                           choose_device, default_workers, list_images, mark_png)
from tools._trained_model import load_trained_model
from tools.embed import embed_to_file
from tools.figures import MAX_QUERIES, MAX_THUMB, compose_grid, draw_grid
from utilities.errors import run_command

NORM_TOLERANCE = 1e-3


def is_normalized(embeddings: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(embeddings, axis=1) - 1) < NORM_TOLERANCE))


def top_k(gallery: np.ndarray, queries: np.ndarray, k: int, inner_product: bool,
          own_ids: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids, scores)`` of the ``k`` best gallery rows per query, best first (exact faiss).

    ``own_ids[q]`` (or -1): the gallery row that is query q's own image, left out wherever it
    ranks. Ranks beyond the gallery's size get id -1.
    """
    import faiss  # loaded when a search runs, as evaluation loads it (evaluation/backend.py)

    index = (faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2)(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    extra = int(own_ids is not None and (own_ids >= 0).any())
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + extra)
    if extra:
        dropped = ids == own_ids[:, None]
        dropped[~dropped.any(axis=1), -1] = True  # one entry dropped per row
        keep = ~dropped
        ids = ids[keep].reshape(len(ids), k)
        scores = scores[keep].reshape(len(ids), k)
    return ids, scores


def query_embeddings(query: str, run: Optional[str], checkpoint: str, device: Optional[str],
                     batch_size: Optional[int],
                     num_workers: int) -> Tuple[EmbeddingFile, List[str]]:
    """The query embeddings and the lines to print about skipped images."""
    if query.endswith(".npz"):
        return EmbeddingFile.load(query, "--query"), []
    images = list_images(query, "--query")
    if run is None:
        raise ToolError(f"--query '{query}' names images; pass --run RUN_DIR to embed them with "
                        f"that run's network (or give an .npz written by tools.embed)")

    trained = load_trained_model(run, checkpoint)
    result = embed_to_file(trained, images, choose_device(device),
                           batch_size or trained.spec.eval_bs, num_workers)
    notes = [f"skipped unreadable query image {path}: {reason}"
             for path, reason in zip(result.skipped, result.skipped_reasons)]
    return result, notes


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def check_comparable(gallery: EmbeddingFile, queries: EmbeddingFile,
                     gallery_name: str = "the gallery", query_name: str = "the queries") -> None:
    """Refuse a gallery and queries that live in different embedding spaces: embedded by
    different checkpoints (each .npz records the one that embedded it), or one side
    L2-normalized and the other not (recorded, or measured on the rows)."""
    recorded = [bool(gallery.checkpoint), bool(queries.checkpoint)]
    if recorded == [True, True] and not _same_file(gallery.checkpoint, queries.checkpoint):
        raise ToolError(f"{gallery_name} was embedded by checkpoint '{gallery.checkpoint}' and "
                        f"{query_name} by '{queries.checkpoint}'; distances between embeddings "
                        f"of different networks mean nothing - embed both with the same run and "
                        f"checkpoint")
    if recorded == [True, False] or recorded == [False, True]:
        lacking = query_name if recorded[0] else gallery_name
        raise ToolError(f"{lacking} does not record the checkpoint that embedded it (not written "
                        f"by tools.embed?), so it cannot be matched to the other side; embed both "
                        f"with tools.embed")
    flags = [gallery.normalized, queries.normalized]
    measured = [is_normalized(gallery.embeddings), is_normalized(queries.embeddings)]
    for name, flag, unit in ((gallery_name, flags[0], measured[0]),
                             (query_name, flags[1], measured[1])):
        if flag and not unit:
            raise ToolError(f"{name} says its embeddings are L2-normalized but its rows do not "
                            f"have norm 1; the file was altered - re-embed with tools.embed")
    if flags[0] != flags[1] or measured[0] != measured[1]:
        state = {True: "L2-normalized", False: "not normalized"}
        raise ToolError(f"{gallery_name} is {state[flags[0] or measured[0]]} but {query_name} "
                        f"is {state[flags[1] or measured[1]]}; their distances are not "
                        f"comparable - embed both with the same run")


def search(gallery: EmbeddingFile, queries: EmbeddingFile, k: int,
           keep_self: bool = False) -> Tuple[np.ndarray, np.ndarray, bool, Optional[np.ndarray]]:
    """``(ids, scores, inner_product, matches)``; matches (same class name) when both sides have
    class labels, else None."""
    if queries.embeddings.shape[1] != gallery.embeddings.shape[1]:
        raise ToolError(f"the query embeddings have dimension {queries.embeddings.shape[1]} but "
                        f"the gallery's have {gallery.embeddings.shape[1]}; embed both with the "
                        f"same run")
    if not 1 <= k <= len(gallery.paths):
        raise ToolError(f"-k must be between 1 and the gallery's {len(gallery.paths)} images, "
                        f"got {k}")
    check_comparable(gallery, queries)
    inner_product = is_normalized(gallery.embeddings) and is_normalized(queries.embeddings)
    own_ids = None
    if not keep_self:
        row_of = {os.path.abspath(str(p)): i for i, p in enumerate(gallery.paths)}
        own_ids = np.array([row_of.get(os.path.abspath(str(p)), -1) for p in queries.paths],
                           dtype=np.int64)
    ids, scores = top_k(gallery.embeddings, queries.embeddings, k, inner_product, own_ids)
    matches = None
    query_classes, gallery_classes = queries.class_of(np.arange(len(queries.paths))), None
    if query_classes is not None and gallery.labels is not None:
        gallery_classes = gallery.class_of(np.maximum(ids, 0))
        matches = (gallery_classes == query_classes[:, None]) & (ids >= 0)
    return ids, scores, inner_product, matches


def write_csv(out: str, gallery: EmbeddingFile, queries: EmbeddingFile, ids: np.ndarray,
              scores: np.ndarray, inner_product: bool, matches: Optional[np.ndarray]) -> None:
    score_name = "cosine_similarity" if inner_product else "squared_l2_distance"
    columns = ["query", "rank", "neighbour", score_name]
    if matches is not None:
        columns += ["query_class", "neighbour_class", "same_class"]
    with atomic_output(out) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for q in range(len(ids)):
            for rank, (g, score) in enumerate(zip(ids[q], scores[q]), start=1):
                if g < 0:
                    continue
                row = [queries.paths[q], rank, gallery.paths[g], f"{score:.6g}"]
                if matches is not None:
                    row += [queries.class_of(np.array([q]))[0], gallery.class_of(np.array([g]))[0],
                            int(matches[q, rank - 1])]
                writer.writerow(row)


def write_figure(out: str, gallery: EmbeddingFile, queries: EmbeddingFile, ids: np.ndarray,
                 matches: Optional[np.ndarray], max_queries: int, thumb: int) -> int:
    """The retrieval figure of tools.figures for the first ``max_queries`` queries."""

    shown = min(max_queries, len(ids))
    ids = ids[:shown]
    if (ids < 0).any():
        raise ToolError(f"--figure: the gallery has fewer than -k {ids.shape[1]} images besides "
                        f"a query; lower -k")
    image, row_tops = compose_grid([str(p) for p in queries.paths[:shown]],
                                   [str(p) for p in gallery.paths], ids[:, None],
                                   None if matches is None else matches[:shown, None], thumb)
    labels = [os.path.basename(str(p))[:24] for p in queries.paths[:shown]]
    legend = "green: same class, red: other class" if matches is not None else \
        "grey frames: classes unknown"
    with atomic_output(out) as temporary:
        draw_grid(image, labels, row_tops, ids.shape[1], thumb,
                  f"top-{ids.shape[1]} of {len(gallery.paths)} gallery images\n{legend}",
                  temporary)
        mark_png(temporary, "tools.search")
    return shown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.search",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", required=True, help=".npz written by tools.embed.")
    parser.add_argument("--query", required=True,
                        help="An .npz of tools.embed, or an image, folder or list file (--run).")
    parser.add_argument("--run", default=None, help="Run folder that embeds query images.")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"])
    parser.add_argument("-k", "--top_k", type=int, default=10, dest="k")
    parser.add_argument("--keep_self", action="store_true",
                        help="Keep gallery images with the query's own path.")
    parser.add_argument("--out", default=None, help="CSV file of the results.")
    parser.add_argument("--figure", default=None, help="PNG of queries and their neighbours.")
    parser.add_argument("--figure_queries", type=int, default=8, help="Queries in the figure.")
    parser.add_argument("--thumb", type=int, default=96, help="Thumbnail side in pixels.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any).")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--num_workers", type=int, default=default_workers())
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if not (16 <= args.thumb <= MAX_THUMB and 1 <= args.figure_queries <= MAX_QUERIES):
            raise ToolError(f"--thumb must be in 16..{MAX_THUMB} and --figure_queries in "
                            f"1..{MAX_QUERIES} (got {args.thumb}, {args.figure_queries})")
        check_loader(args.batch_size, args.num_workers)
        if args.out:
            check_output(args.out, "--out", (".csv",))
        if args.figure:
            check_output(args.figure, "--figure", (".png",))
        if args.out and args.figure and _same_file(args.out, args.figure):
            raise ToolError("--out and --figure name the same file")
        gallery = EmbeddingFile.load(args.gallery, "--gallery")
        queries, notes = query_embeddings(args.query, args.run, args.checkpoint, args.device,
                                          args.batch_size, args.num_workers)
        ids, scores, inner_product, matches = search(gallery, queries, args.k, args.keep_self)
        for note in notes:
            print(note)
        score_name = "cosine similarity" if inner_product else "squared L2 distance"
        print(f"top-{args.k} of {len(gallery.paths)} gallery images by {score_name}")
        for q in range(len(ids)):
            print(f"query {queries.paths[q]}")
            for rank, (g, score) in enumerate(zip(ids[q], scores[q]), start=1):
                if g < 0:
                    continue
                verdict = "" if matches is None else \
                    ("  same class" if matches[q, rank - 1] else "  other class")
                print(f"  {rank:3d}  {score:.4f}  {gallery.paths[g]}{verdict}")
        if args.out:
            write_csv(args.out, gallery, queries, ids, scores, inner_product, matches)
            print(f"wrote {args.out}")
        if args.figure:
            shown = write_figure(args.figure, gallery, queries, ids, matches, args.figure_queries,
                                 args.thumb)
            print(f"wrote {args.figure} ({shown} of {len(ids)} queries)")
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
