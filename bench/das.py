"""Time one DAS step against pytorch-metric-learning's multi-similarity loss, in the same run.

Setting of issue 4: B=112 (2 samples of 56 classes out of C=100), D=512, K=8, 3 generated
copies (448 rows reach the loss), other DAS options at their defaults, banks warm. Both sides are
timed on the same batches, interleaved, and the medians are compared:

* ``das_ms``: ``DenselyAnchoredSampling.forward`` (statistics update + generation) on embeddings
  that require grad (no ``--detach``, so the autograd graph is recorded too);
* ``ms_loss_ms``: ``pytorch_metric_learning.losses.MultiSimilarityLoss`` forward + backward on
  the 448 rows DAS returned.

Goal: ratio <= 0.15 on CPU; measured figures (and the paper's per-sample implementation's) are in
docs/PERFORMANCE.md, section DAS. Run: ``python -m bench.das`` (``--device cuda`` on a GPU).
The last line is ``das_ms=<a> ms_loss_ms=<b> ratio=<a/b>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from das import DenselyAnchoredSampling


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Timed steps.")
    parser.add_argument("--warmup", type=int, default=100,
                        help="Untimed steps first (fills every class's bank).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--sync_free", action="store_true",
                        help="Force the accelerator (fixed-size, sync-free) bank write on CPU too.")
    args = parser.parse_args()

    from pytorch_metric_learning.losses import MultiSimilarityLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch, dim, num_classes, per_class = 112, 512, 100, 2
    torch.manual_seed(0)
    das = DenselyAnchoredSampling(num_classes, dim, num_produce=3, dfs_num_scale=8).to(device)
    if args.sync_free:
        das.sync_free_bank_writes = True
    ms_loss = MultiSimilarityLoss()

    def next_batch():
        classes = torch.randperm(num_classes)[:batch // per_class]
        labels = classes.repeat_interleave(per_class).to(device)
        embeddings = F.normalize(torch.randn(batch, dim, device=device), dim=1)
        return embeddings.requires_grad_(), labels

    das_times, loss_times = [], []
    for step in range(args.warmup + args.steps):
        embeddings, labels = next_batch()
        synchronize(device)
        start = time.perf_counter()
        all_embeddings, all_labels = das(embeddings, labels)
        synchronize(device)
        das_time = time.perf_counter() - start

        rows = all_embeddings.detach().requires_grad_()
        synchronize(device)
        start = time.perf_counter()
        ms_loss(rows, all_labels).backward()
        synchronize(device)
        loss_time = time.perf_counter() - start
        if step >= args.warmup:
            das_times.append(das_time * 1e3)
            loss_times.append(loss_time * 1e3)

    assert int(das.mts_fill[das.mts_fill > 0].min()) == das.mts_bank_size, "banks not warm"
    das_ms = statistics.median(das_times)
    loss_ms = statistics.median(loss_times)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"steps={args.steps} rows_to_loss={len(all_labels)} "
          f"sync_free_bank_writes={args.sync_free or device.type != 'cpu'}")
    print(f"das p10/p90 ms: {statistics.quantiles(das_times, n=10)[0]:.3f}/"
          f"{statistics.quantiles(das_times, n=10)[-1]:.3f}; ms_loss p10/p90 ms: "
          f"{statistics.quantiles(loss_times, n=10)[0]:.3f}/"
          f"{statistics.quantiles(loss_times, n=10)[-1]:.3f}")
    print(f"das_ms={das_ms:.3f} ms_loss_ms={loss_ms:.3f} ratio={das_ms / loss_ms:.3f}")


if __name__ == "__main__":
    main()
