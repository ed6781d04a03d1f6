"""Runs that differ only in ``--seed``: one grouping shared by ``tools.summarize`` and
``tools.paper_tables``, and the mean +- sample standard deviation they report (the convention
of Revisiting-DML's result tables)."""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

from parameters import bookkeeping_keys

# What may differ between seeds of one setting: the seed and the entries that do not change the
# experiment (each option says so where it is declared; parameters.bookkeeping_keys).
NOT_SETTINGS = bookkeeping_keys() | {"seed"}


def settings_of(config: Dict) -> str:
    """The configuration without the seed and bookkeeping options, as a comparable key."""
    return json.dumps({k: v for k, v in config.items() if k not in NOT_SETTINGS}, sort_keys=True)


def group_by_settings(runs: Sequence) -> Dict[str, List]:
    """Runs (anything with a ``config`` dict) keyed by :func:`settings_of`, in input order."""
    groups: Dict[str, List] = {}
    for run in runs:
        groups.setdefault(settings_of(run.config), []).append(run)
    return groups


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1); the std is None for a single value."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)
