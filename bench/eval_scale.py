"""Evaluation at Stanford Online Products scale: the project's full metric set against bare faiss.

Builds SOP-sized clustered random embeddings (60,502 x 512, 11,316 classes of 2 or more images),
then, each in a fresh subprocess so that peak memory is measured per phase:
  project: evaluation.compute_metrics with recall@1/10/100/1000, map@r, r_precision, nmi, f1;
  faiss:   a bare exact faiss kNN search (k = 1001, all queries in one call) plus a bare
           faiss k-means (one centroid per class, --kmeans_iterations iterations).
The last line is ``eval_s=<a> faiss_s=<b> ratio=<a/b> peak_rss_mb=<m>``, where m is the peak
resident memory of the project's evaluation process (interpreter, imports and embeddings included).
On a shared machine, ``--repeats 3`` alternates the phases and keeps each one's fastest run.

    python bench/eval_scale.py               # full size (a few minutes on 2 cores)
    python bench/eval_scale.py --scale 0.1   # 6,050 x 512, 1,131 classes, for a quick run
"""
from __future__ import annotations

import argparse
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
SOP_TEST_IMAGES = 60_502
SOP_TEST_CLASSES = 11_316
RETRIEVAL_METRICS = ["recall@1", "recall@10", "recall@100", "recall@1000", "map@r", "r_precision"]
CLUSTERING_METRICS = ["nmi", "f1"]
BARE_KNN_K = 1001  # Recall@1000 plus the query itself


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def clustered_embeddings(num_samples: int, num_classes: int, dim: int, seed: int):
    """L2-normalized samples around random class centres; every class has at least 2 samples
    (SOP's test classes hold 2 to 12 images, 5.3 on average)."""
    if num_samples < 2 * num_classes:
        raise SystemExit(f"need at least 2 samples per class: {num_samples} < 2 x {num_classes}")
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(num_classes), 2),
                             rng.integers(0, num_classes, num_samples - 2 * num_classes)])
    labels = rng.permutation(labels).astype(np.int64)
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    embeddings = rng.standard_normal((num_samples, dim), dtype=np.float32)
    embeddings *= 2.2 / np.sqrt(dim)  # noise level that puts R@1 near 0.8 at full size
    embeddings += centres[labels]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings, labels


def run_project(embeddings: np.ndarray, labels: np.ndarray, iterations: int, seed: int) -> dict:
    """compute_metrics on the full metric set, timed as two calls (retrieval metrics, clustering
    metrics) that share no work, so that each can be set against its bare faiss counterpart."""
    from evaluation import compute_metrics

    scores, seconds = {}, {}
    for part, names in (("knn", RETRIEVAL_METRICS), ("kmeans", CLUSTERING_METRICS)):
        start = time.perf_counter()
        scores.update(compute_metrics(names, embeddings, labels, kmeans_iterations=iterations,
                                      seed=seed))
        seconds[part] = time.perf_counter() - start
    return {"seconds": sum(seconds.values()), "knn_seconds": seconds["knn"],
            "kmeans_seconds": seconds["kmeans"], "scores": scores}


def run_bare_faiss(embeddings: np.ndarray, labels: np.ndarray, iterations: int, seed: int) -> dict:
    import faiss

    start = time.perf_counter()
    index = faiss.IndexFlatL2(embeddings.shape[1])
    index.add(embeddings)
    index.search(embeddings, min(BARE_KNN_K, len(embeddings)))
    knn_seconds = time.perf_counter() - start
    start = time.perf_counter()
    kmeans = faiss.Kmeans(embeddings.shape[1], len(np.unique(labels)), niter=iterations, seed=seed)
    kmeans.train(embeddings)
    kmeans_seconds = time.perf_counter() - start
    return {"seconds": knn_seconds + kmeans_seconds, "knn_seconds": knn_seconds,
            "kmeans_seconds": kmeans_seconds, "kmeans_iterations_run": len(kmeans.obj)}


def run_phase(phase: str, data_dir: str, iterations: int, seed: int) -> None:
    """Child process: import, load the embeddings, run one phase, print a JSON line."""
    if phase == "project":
        sys.path.insert(0, str(REPO_ROOT))
        import evaluation  # noqa: F401  (torch, scikit-learn, faiss: counted before the phase)
    embeddings = np.load(os.path.join(data_dir, "embeddings.npy"))
    labels = np.load(os.path.join(data_dir, "labels.npy"))
    rss_loaded = peak_rss_mb()
    run = run_project if phase == "project" else run_bare_faiss
    result = run(embeddings, labels, iterations, seed)
    result.update(rss_before_mb=rss_loaded, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


def child(phase: str, data_dir: str, iterations: int, seed: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--data_dir",
               data_dir, "--kmeans_iterations", str(iterations), "--seed", str(seed)]
    finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"the {phase} phase failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Fraction of SOP's test size (samples and classes); 0.1 for a quick run.")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kmeans_iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="Alternate the two phases this many times and keep each one's fastest "
                             "run (useful on a shared machine).")
    parser.add_argument("--phase", choices=["project", "faiss"], help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args.data_dir, args.kmeans_iterations, args.seed)
        return

    num_samples = int(round(SOP_TEST_IMAGES * args.scale))
    num_classes = int(round(SOP_TEST_CLASSES * args.scale))
    embeddings, labels = clustered_embeddings(num_samples, num_classes, args.dim, args.seed)
    embeddings_mb = embeddings.nbytes / 2**20
    print(f"embeddings: {num_samples} x {args.dim} float32 ({embeddings_mb:.0f} MB), "
          f"{num_classes} classes; k-means {args.kmeans_iterations} iterations; "
          f"faiss threads: {__import__('faiss').omp_get_max_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as data_dir:
        np.save(os.path.join(data_dir, "embeddings.npy"), embeddings)
        np.save(os.path.join(data_dir, "labels.npy"), labels)
        del embeddings, labels
        projects, bares = [], []
        for _ in range(args.repeats):  # alternated, so that both see the same machine load
            projects.append(child("project", data_dir, args.kmeans_iterations, args.seed))
            bares.append(child("faiss", data_dir, args.kmeans_iterations, args.seed))
            print("project: retrieval metrics {:.1f} s + clustering metrics {:.1f} s | bare faiss: "
                  "kNN k={} {:.1f} s + k-means {:.1f} s ({} of {} iterations run: faiss stops "
                  "once the objective stops improving)".format(
                      projects[-1]["knn_seconds"], projects[-1]["kmeans_seconds"],
                      min(BARE_KNN_K, num_samples), bares[-1]["knn_seconds"],
                      bares[-1]["kmeans_seconds"], bares[-1]["kmeans_iterations_run"],
                      args.kmeans_iterations), flush=True)
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
    print("eval_s={:.1f} faiss_s={:.1f} ratio={:.2f} peak_rss_mb={:.0f}".format(
        project_s, bare_s, project_s / bare_s, peak))


if __name__ == "__main__":
    main()
