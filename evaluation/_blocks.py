"""Helpers of the kNN search that need no faiss, shared by both backends (faiss_ops, torch_ops)
and by the metric computation, so that importing the evaluation code never imports faiss."""
from __future__ import annotations

from typing import Optional

import numpy as np

# Bytes of search output (float32 distance + int64 id per neighbour) per chunk of queries. Keeps
# the search's own memory bounded (at most 64 MiB: 4,096 queries at k = 1001, all of SOP at
# k = 65) at no speed cost, since faiss itself works in blocks of 4,096 queries.
SEARCH_CHUNK_BYTES = 64 * 2**20
MIN_CHUNK_QUERIES = 256


def chunk_size(k: int, chunk_bytes: Optional[int] = None, block: int = 1) -> int:
    """Queries per search call so that a call's output stays within ``chunk_bytes``; a multiple
    of the backend's own query ``block`` when possible (a partial block computes less
    efficiently)."""
    chunk_bytes = SEARCH_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    queries = max(MIN_CHUNK_QUERIES, chunk_bytes // (12 * k))
    return queries - queries % block if queries >= block else queries


def _without_self(ids: np.ndarray, own_ids: np.ndarray) -> np.ndarray:
    """Drop each row's own id from (n, k + 1) ranked ids; rows that lack it lose their last id."""
    kept = ids[:, 1:]  # the usual case, self ranked first: a view, no copy
    unusual = np.flatnonzero(ids[:, 0] != own_ids)
    if unusual.size:
        rows = ids[unusual]
        drop = rows == own_ids[unusual, None]
        drop[~drop.any(axis=1), -1] = True  # exactly one dropped entry per row
        kept[unusual] = rows[~drop].reshape(len(unusual), -1)
    return kept
