"""Evaluation metrics, selected with ``--evaluation_metrics``. One file per metric.

Names are exact (``nmi``, ``f1``, ``map@r``, ``mAP_c``, ``dists@intra``, ...); a member
registered with a trailing ``@K`` (``recall@K``, ``e_recall@K``, ``c_recall@K``) accepts any
positive integer in place of ``K``, one with a trailing ``@N`` (``rho_spectrum@N``) any integer,
zero and negative ones included. :func:`select` turns a name into a metric object.
"""
from __future__ import annotations

import re
from typing import List, Sequence

from utilities.registry import Registry, UnknownNameError

from ._base import (CLASS_DIRECTIONS, CLUSTERS, COSINE, EUCLIDEAN, NEIGHBOURS, SPECTRUM,
                    BaseMetric, ClassDirectionMetric, ClassDirections, ClusterMetric,
                    NeighbourMetric, SpectrumMetric)

REGISTRY: Registry = Registry("metric", "--evaluation_metrics")
REGISTRY.import_members(__name__, __path__)

_PARAMETRIZED = re.compile(r"^(?P<stem>.+)@(?P<k>[1-9][0-9]*)$")
_SIGNED = re.compile(r"^(?P<stem>.+)@(?P<n>-?[0-9]+)$")


def select(name: str) -> BaseMetric:
    """The metric named ``name``; an unknown name raises ``UnknownNameError`` listing the valid
    names."""
    match = _PARAMETRIZED.match(name)
    if match and f"{match['stem']}@K" in REGISTRY:
        return REGISTRY.get(f"{match['stem']}@K").from_name(name)
    signed = _SIGNED.match(name)
    if signed and f"{signed['stem']}@N" in REGISTRY:
        return REGISTRY.get(f"{signed['stem']}@N").from_name(name)
    if name.endswith("@K") and name in REGISTRY:
        raise UnknownNameError(f"metric '{name}' for {REGISTRY.flag} needs a positive integer in "
                               f"place of K, e.g. '{name[:-1]}1'")
    if name.endswith("@N") and name in REGISTRY:
        raise UnknownNameError(f"metric '{name}' for {REGISTRY.flag} needs an integer in place of "
                               f"N, e.g. '{name[:-1]}1', '{name[:-1]}0' or '{name[:-1]}-1'")
    return REGISTRY.get(name).from_name(name)


def select_all(names: Sequence[str]) -> List[BaseMetric]:
    """Metric objects for ``names`` (duplicates dropped, order kept); checks every name first."""
    return [select(name) for name in dict.fromkeys(names)]


__all__ = ["REGISTRY", "select", "select_all", "BaseMetric", "NeighbourMetric", "ClusterMetric",
           "SpectrumMetric", "ClassDirectionMetric", "ClassDirections", "NEIGHBOURS", "CLUSTERS",
           "SPECTRUM", "CLASS_DIRECTIONS", "EUCLIDEAN", "COSINE"]
