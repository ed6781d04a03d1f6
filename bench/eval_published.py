"""Cost of the published (Revisiting-DML / DAS) metric names against the project's own retrieval
metrics, measured in the same run on the same clustered random embeddings.

Each line: the metric group, seconds, the ratio to the reference group (recall@1 + map@r, one kNN
search R deep) and the peak of Python-tracked memory during the group (tracemalloc: numpy
arrays, the kNN outputs included).

    python bench/eval_published.py              # CARS196 test size: 8,131 x 512, 98 classes
    python bench/eval_published.py --samples 60502 --classes 11316 --skip mAP   # SOP size
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation import compute_metrics  # noqa: E402

GROUPS = {
    "reference": ["recall@1", "map@r"],
    "mAP_c": ["mAP_c"],
    "mAP_1000+mAP_lim": ["mAP_1000", "mAP_lim"],
    "mAP": ["mAP"],
    "cosine (unnormalized input)": ["c_recall@1", "c_mAP_c"],
    "dists@*": ["dists@intra", "dists@inter", "dists@intra_over_inter"],
    "rho_spectrum@*": ["rho_spectrum@0", "rho_spectrum@1", "rho_spectrum@-1", "rho_spectrum@2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8131)
    parser.add_argument("--classes", type=int, default=98)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--skip", nargs="*", default=[], help="group names to leave out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.samples)
    centres = rng.standard_normal((args.classes, args.dim))
    raw = (centres[labels] + 3.0 * rng.standard_normal((args.samples, args.dim))).astype(np.float32)
    normalized = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    reference = None
    for group, names in GROUPS.items():
        if group in args.skip:
            continue
        x = raw if group.startswith("cosine") else normalized
        tracemalloc.start()
        started = time.perf_counter()
        compute_metrics(names, x, labels)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        reference = reference or seconds
        print(f"{group:30s} {seconds:7.1f} s  x{seconds / reference:5.1f}  peak {peak:6.0f} MiB",
              flush=True)


if __name__ == "__main__":
    main()
