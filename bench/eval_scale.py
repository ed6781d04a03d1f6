"""Evaluation at Stanford Online Products scale: the project's full metric set against bare faiss.

Builds SOP-sized clustered random embeddings (60,502 x 512, 11,316 classes of 2 or more images),
then, each in a fresh subprocess so that peak memory is measured per phase:
  project: evaluation.compute_metrics with recall@1/10/100/1000, map@r, r_precision, nmi, f1;
  faiss:   a bare exact faiss kNN search (k = 1001, all queries in one call) plus a bare
           faiss k-means (one centroid per class, --kmeans_iterations iterations).
The last line is ``eval_s=<a> faiss_s=<b> ratio=<a/b> peak_rss_mb=<m>``, where m is the peak
resident memory of the project's evaluation process (interpreter, imports and embeddings included).
On a shared machine, ``--repeats 3`` alternates the phases and keeps each one's fastest run.
``--layout inshop`` does the same for In-Shop's query-vs-gallery evaluation (14,218 queries,
12,612 gallery images, 3,985 classes; Recall@1/10/20/30/50, bare kNN k = 50, k-means on both).

    python bench/eval_scale.py                   # full SOP size (a few minutes on 2 cores)
    python bench/eval_scale.py --scale 0.1       # 6,050 x 512, 1,132 classes, for a quick run
    python bench/eval_scale.py --layout inshop   # In-Shop size, query vs gallery
    python bench/eval_scale.py --backend torch [--device cuda]   # torch kNN/k-means vs faiss

With ``--backend torch`` the project phase uses the torch backend, the project's faiss path runs
once more for reference, and the last line adds ``max_retrieval_diff=<largest absolute
difference of recall@K, map@r, r_precision> nmi_diff=<d>``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {
    # test images (queries, gallery), classes, Recall@K values
    "sop": dict(queries=0, gallery=60_502, classes=11_316, ks=[1, 10, 100, 1000]),
    "inshop": dict(queries=14_218, gallery=12_612, classes=3_985, ks=[1, 10, 20, 30, 50]),
}
NOISE = 2.2  # sample noise (in units of a class centre's norm) that puts R@1 near 0.8 on SOP
CLUSTERING_METRICS = ["nmi", "f1"]


def retrieval_metrics(layout: str) -> list:
    return [f"recall@{k}" for k in LAYOUTS[layout]["ks"]] + ["map@r", "r_precision"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def clustered_embeddings(labels: np.ndarray, centres: np.ndarray, rng: np.random.Generator):
    """L2-normalized samples around their class centre."""
    dim = centres.shape[1]
    embeddings = rng.standard_normal((len(labels), dim), dtype=np.float32)
    embeddings *= NOISE / np.sqrt(dim)
    embeddings += centres[labels]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings


def class_labels(num_samples: int, num_classes: int, per_class: int, rng: np.random.Generator):
    """Every class ``per_class`` times, the remaining samples in random classes, shuffled (SOP's
    test classes hold 2 to 12 images, 5.3 on average)."""
    if num_samples < per_class * num_classes:
        raise SystemExit(f"need {per_class} samples per class: {num_samples} < "
                         f"{per_class} x {num_classes}")
    labels = np.concatenate([np.repeat(np.arange(num_classes), per_class),
                             rng.integers(0, num_classes, num_samples - per_class * num_classes)])
    return rng.permutation(labels).astype(np.int64)


def build_data(layout: str, scale: float, dim: int, seed: int) -> dict:
    """Gallery (``embeddings``, ``labels``) and, for a query/gallery layout, the queries."""
    sizes = {key: int(round(value * scale)) for key, value in LAYOUTS[layout].items()
             if key != "ks"}
    rng = np.random.default_rng(seed)
    if sizes["queries"]:  # query/gallery: every class has a query and a gallery image
        labels = class_labels(sizes["gallery"], sizes["classes"], 1, rng)
        query_labels = class_labels(sizes["queries"], sizes["classes"], 1, rng)
    else:  # self-retrieval: at least 2 images per class
        labels = class_labels(sizes["gallery"], sizes["classes"], 2, rng)
    centres = rng.standard_normal((sizes["classes"], dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = {"embeddings": clustered_embeddings(labels, centres, rng), "labels": labels}
    if sizes["queries"]:
        data.update(query_embeddings=clustered_embeddings(query_labels, centres, rng),
                    query_labels=query_labels)
    return data


def run_project(data: dict, layout: str, iterations: int, seed: int, backend: str = "faiss",
                device: str = "cpu") -> dict:
    """compute_metrics on the full metric set, timed as two calls (retrieval metrics, clustering
    metrics) that share no work, so that each can be set against its bare faiss counterpart."""
    from evaluation import compute_metrics, select_backend

    chosen = select_backend(backend, device)
    scores, seconds = {}, {}
    for part, names in (("knn", retrieval_metrics(layout)), ("kmeans", CLUSTERING_METRICS)):
        start = time.perf_counter()
        scores.update(compute_metrics(names, data["embeddings"], data["labels"],
                                      data.get("query_embeddings"), data.get("query_labels"),
                                      kmeans_iterations=iterations, seed=seed, backend=chosen))
        if chosen.device.type == "cuda":
            import torch
            torch.cuda.synchronize(chosen.device)
        seconds[part] = time.perf_counter() - start
    return {"seconds": sum(seconds.values()), "knn_seconds": seconds["knn"],
            "kmeans_seconds": seconds["kmeans"], "scores": scores}


def bare_knn_k(data: dict, layout: str) -> int:
    """Recall@K's largest K, plus the query itself in self-retrieval."""
    k = max(LAYOUTS[layout]["ks"]) + int("query_embeddings" not in data)
    return min(k, len(data["embeddings"]))


def run_bare_faiss(data: dict, layout: str, iterations: int, seed: int) -> dict:
    import faiss

    gallery = data["embeddings"]
    queries = data.get("query_embeddings", gallery)
    start = time.perf_counter()
    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(gallery)
    index.search(queries, bare_knn_k(data, layout))
    knn_seconds = time.perf_counter() - start
    everything = gallery if queries is gallery else np.concatenate([queries, gallery])
    num_classes = len(np.unique(np.concatenate([data["labels"], data.get("query_labels", [])])))
    start = time.perf_counter()
    kmeans = faiss.Kmeans(gallery.shape[1], num_classes, niter=iterations, seed=seed)
    kmeans.train(everything)
    kmeans_seconds = time.perf_counter() - start
    return {"seconds": knn_seconds + kmeans_seconds, "knn_seconds": knn_seconds,
            "kmeans_seconds": kmeans_seconds, "kmeans_iterations_run": len(kmeans.obj)}


def run_phase(phase: str, data_dir: str, layout: str, iterations: int, seed: int,
              backend: str = "faiss", device: str = "cpu") -> None:
    """Child process: import, load the embeddings, run one phase, print a JSON line."""
    if phase in ("project", "reference"):
        sys.path.insert(0, str(REPO_ROOT))
        importlib.import_module("evaluation")  # torch, scikit-learn, faiss: before the phase
    data = {path.stem: np.load(path) for path in Path(data_dir).glob("*.npy")}
    rss_loaded = peak_rss_mb()
    if phase == "project":
        result = run_project(data, layout, iterations, seed, backend, device)
    elif phase == "reference":  # the project's faiss path: the scores the backend must match
        result = run_project(data, layout, iterations, seed, "faiss", "cpu")
    else:
        result = run_bare_faiss(data, layout, iterations, seed)
    result.update(rss_before_mb=rss_loaded, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


def child(phase: str, data_dir: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--data_dir",
               data_dir, "--layout", args.layout, "--kmeans_iterations",
               str(args.kmeans_iterations), "--seed", str(args.seed), "--backend", args.backend,
               "--device", args.device]
    finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"the {phase} phase failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="sop",
                        help="sop: each image queried against all others; inshop: query vs "
                             "gallery.")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Fraction of the test set's size (images and classes); 0.1 for a "
                             "quick run.")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kmeans_iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="Alternate the two phases this many times and keep each one's fastest "
                             "run (useful on a shared machine).")
    parser.add_argument("--backend", choices=["faiss", "torch", "auto"], default="faiss",
                        help="The project's kNN/k-means backend (--eval_backend). Other than "
                             "faiss, the project's faiss path also runs once, for the "
                             "max_retrieval_diff and nmi_diff of the last line.")
    parser.add_argument("--device", default="cpu",
                        help="Device of the torch backend (cpu, cuda).")
    parser.add_argument("--phase", choices=["project", "faiss", "reference"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args.data_dir, args.layout, args.kmeans_iterations, args.seed,
                  args.backend, args.device)
        return

    data = build_data(args.layout, args.scale, args.dim, args.seed)
    embeddings_mb = sum(array.nbytes for array in data.values()) / 2**20
    num_classes = len(np.unique(np.concatenate([data["labels"], data.get("query_labels", [])])))
    queries = len(data["query_embeddings"]) if "query_embeddings" in data else "all"
    print(f"{args.layout}: {queries} queries, {len(data['embeddings'])} references, dim {args.dim} "
          f"({embeddings_mb:.0f} MB), {num_classes} classes; k-means "
          f"{args.kmeans_iterations} iterations; faiss threads: "
          f"{__import__('faiss').omp_get_max_threads()}", flush=True)
    knn_k = bare_knn_k(data, args.layout)
    with tempfile.TemporaryDirectory() as data_dir:
        for name, array in data.items():
            np.save(os.path.join(data_dir, f"{name}.npy"), array)
        del data
        projects, bares = [], []
        for _ in range(args.repeats):  # alternated, so that both see the same machine load
            projects.append(child("project", data_dir, args))
            bares.append(child("faiss", data_dir, args))
            print("project: retrieval metrics {:.1f} s + clustering metrics {:.1f} s | bare faiss: "
                  "kNN k={} {:.1f} s + k-means {:.1f} s ({} of {} iterations run: faiss stops "
                  "once the objective stops improving)".format(
                      projects[-1]["knn_seconds"], projects[-1]["kmeans_seconds"], knn_k,
                      bares[-1]["knn_seconds"], bares[-1]["kmeans_seconds"],
                      bares[-1]["kmeans_iterations_run"], args.kmeans_iterations), flush=True)
        reference = child("reference", data_dir, args) if args.backend != "faiss" else None
    print("  " + ", ".join(f"{name}={value:.4f}" for name, value in projects[0]["scores"].items()))
    project_s = min(run["seconds"] for run in projects)
    bare_s = min(run["seconds"] for run in bares)
    peak = max(run["peak_rss_mb"] for run in projects)
    before = min(run["rss_before_mb"] for run in projects)
    print(f"peak RSS: project {peak:.0f} MB ({before:.0f} MB after imports and loading the "
          f"embeddings, so {peak - before:.0f} MB for the evaluation itself); bare faiss "
          f"{max(run['peak_rss_mb'] for run in bares):.0f} MB")
    print(f"project process beyond the embeddings: {peak - embeddings_mb:.0f} MB "
          f"(goal: at most 2048 MB)")
    if args.repeats > 1:
        print(f"eval_s and faiss_s below: the fastest of {args.repeats} runs of each")
    line = "eval_s={:.1f} faiss_s={:.1f} ratio={:.2f} peak_rss_mb={:.0f}".format(
        project_s, bare_s, project_s / bare_s, peak)
    if reference is not None:
        ours, theirs = projects[0]["scores"], reference["scores"]
        retrieval = [n for n in retrieval_metrics(args.layout)]
        print("  faiss path: " + ", ".join(f"{n}={theirs[n]:.4f}" for n in theirs)
              + f" ({reference['seconds']:.1f} s)")
        line += " max_retrieval_diff={:.4f} nmi_diff={:.4f}".format(
            max(abs(ours[n] - theirs[n]) for n in retrieval), abs(ours["nmi"] - theirs["nmi"]))
    print(line)


if __name__ == "__main__":
    main()
