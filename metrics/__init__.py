"""Evaluation metrics, selected with ``--evaluation_metrics``. One file per metric.

Names are exact (``nmi``, ``f1``, ``map@r``, ``r_precision``); a member registered with a
trailing ``@K`` (``recall@K``, its Revisiting-DML alias ``e_recall@K``) accepts any positive
integer in place of ``K``. :func:`select` turns a name into a metric object.
"""
from __future__ import annotations

import re
from typing import List, Sequence

from utilities.registry import Registry, UnknownNameError

from ._base import CLUSTERS, NEIGHBOURS, BaseMetric, ClusterMetric, NeighbourMetric

REGISTRY: Registry = Registry("metric", "--evaluation_metrics")
REGISTRY.import_members(__name__, __path__)

_PARAMETRIZED = re.compile(r"^(?P<stem>.+)@(?P<k>[1-9][0-9]*)$")


def select(name: str) -> BaseMetric:
    """The metric named ``name``; an unknown name raises ``UnknownNameError`` listing the valid
    names."""
    match = _PARAMETRIZED.match(name)
    if match and f"{match['stem']}@K" in REGISTRY:
        return REGISTRY.get(f"{match['stem']}@K").from_name(name)
    if name.endswith("@K") and name in REGISTRY:
        raise UnknownNameError(f"metric '{name}' for {REGISTRY.flag} needs a positive integer in "
                               f"place of K, e.g. '{name[:-1]}1'")
    return REGISTRY.get(name).from_name(name)


def select_all(names: Sequence[str]) -> List[BaseMetric]:
    """Metric objects for ``names`` (duplicates dropped, order kept); checks every name first."""
    return [select(name) for name in dict.fromkeys(names)]


__all__ = ["REGISTRY", "select", "select_all", "BaseMetric", "NeighbourMetric", "ClusterMetric",
           "NEIGHBOURS", "CLUSTERS"]
