"""Helpers shared by the criteria: dtype handling, masked log-sum-exp, tuple statistics."""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from batchminer._functional import gram, label_masks, pairwise_distances  # noqa: F401 (re-exported)


def as_float(embeddings: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 even when the model ran under bf16/fp16 autocast."""
    return embeddings.float() if embeddings.dtype != torch.float64 else embeddings


def full_precision(forward: Callable) -> Callable:
    """Decorator for ``forward``: runs it with autocast off and float32 (or float64) embeddings, so
    that exponentials, log-sum-exps and distance matrices of a criterion called inside the training
    loop's bf16 autocast region are not computed in bf16."""

    @functools.wraps(forward)
    def wrapper(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_real: Optional[int] = None) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return forward(self, as_float(embeddings), labels, num_real)

    return wrapper


def generated_rows(batch_size: int, num_real: Optional[int], device: torch.device) -> torch.Tensor:
    """Bool vector flagging generated rows (DAS appends them after the ``num_real`` real ones)."""
    if num_real is None:
        num_real = batch_size
    return torch.arange(batch_size, device=device) >= num_real


def tuple_stats(tuples: torch.Tensor, num_real: Optional[int]) -> Dict[str, torch.Tensor]:
    """``tuples``, ``tuples_with_generated`` of an index tensor (T, k), without host sync."""
    if num_real is None:
        with_generated = torch.zeros((), dtype=torch.long, device=tuples.device)
    else:
        with_generated = (tuples >= num_real).any(dim=1).sum()
    return {"tuples": torch.full((), tuples.shape[0], dtype=torch.long, device=tuples.device),
            "tuples_with_generated": with_generated.detach()}


def miner_stats(miner) -> Dict[str, torch.Tensor]:
    """The miner's own figures (e.g. ``semihard_fraction``), prefixed ``miner_``, so that the
    training loop, which logs ``criterion.stats``, logs them too."""
    return {f"miner_{key}": value for key, value in getattr(miner, "stats", {}).items()}


def mine_triplets(miner, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (T, 3) triplets the miner chooses on the detached distance matrix: the common first
    step of the triplet-based criteria. The matrix only steers the choice (no gradient), so the
    fast one-product form is fine here; the loss then takes its distances from row differences
    (:func:`row_differences`), which stay accurate for the near-duplicate rows DAS adds."""
    return miner(embeddings, labels, pairwise_distances(embeddings.detach()))


def row_differences(embeddings: torch.Tensor, first: torch.Tensor,
                    second: torch.Tensor) -> torch.Tensor:
    """x[first] - x[second] (T x D), the form the published losses take their distances from.

    The one-product distance matrix |a|^2 + |b|^2 - 2 a.b cancels catastrophically for rows a
    few 0.01 apart (DAS's generated rows): in float32 it keeps about 3 significant digits of such
    a distance and of its gradient, where a difference of rows keeps all of them.
    """
    return embeddings[first] - embeddings[second]


class _SquaredDistances(torch.autograd.Function):
    """|x_i - x_j|^2 (B x B) by the one-product expansion taken in float64 (about 1e-10 relative
    error for rows 0.01 apart, where float32 keeps about 3 digits), returned in the input dtype;
    backward in the input dtype, one product: grad_x = 2 (rowsum(S) x - S @ x), S = g + g^T."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        wide = x.double()
        norms = wide.pow(2).sum(dim=1)
        return (norms[:, None] + norms[None, :] - 2.0 * (wide @ wide.T)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        symmetric = grad + grad.T
        return 2.0 * (symmetric.sum(dim=1, keepdim=True) * x - symmetric @ x)


def accurate_pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix (B x B) for losses that need every pair with gradient, accurate
    for near-duplicate rows, with zero gradient at zero distance (as ``torch.norm`` of a zero
    difference).

    A difference tensor (B x B x D) would cost D times the memory, and the float32 expansion
    |a|^2 + |b|^2 - 2 a.b cancels for rows 0.01 apart; :class:`_SquaredDistances` takes it in
    float64 (one product) with a float32 backward. Rows are centred first (differences do not
    change), which keeps the backward accurate for embeddings far from the origin. Squared
    distances below 1e-14 (|a|^2 + |b|^2), under the resolution of the rows themselves, count as
    0, so that identical rows at two indices (an image drawn twice) get no spurious direction.
    """
    centred = embeddings - embeddings.detach().mean(dim=0, keepdim=True)
    squared = _SquaredDistances.apply(centred)
    norms = centred.detach().pow(2).sum(dim=1)
    positive = squared > 1e-14 * (norms[:, None] + norms[None, :])
    distances = torch.where(positive, squared, torch.ones_like(squared)).sqrt()
    return torch.where(positive, distances, torch.zeros_like(distances))


def triplet_stats(triplets: torch.Tensor, num_real: Optional[int],
                  miner) -> Dict[str, torch.Tensor]:
    """:func:`tuple_stats` of the mined tuples plus the miner's own figures."""
    return {**tuple_stats(triplets, num_real), **miner_stats(miner)}


def pair_stats(pairs: torch.Tensor, num_real: Optional[int]) -> Dict[str, torch.Tensor]:
    """``tuples``/``tuples_with_generated`` for a (B x B) bool mask of used pairs (row, column)."""
    generated = generated_rows(pairs.shape[0], num_real, pairs.device)
    involves_generated = generated[:, None] | generated[None, :]
    return {"tuples": pairs.sum().detach(),
            "tuples_with_generated": (pairs & involves_generated).sum().detach()}


def masked_log1p_sum_exp(values: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(values))`` along ``dim``, stable, 0 (with zero gradient) where the
    mask is empty."""
    values = values.masked_fill(~mask, float("-inf"))
    shift = values.detach().amax(dim=dim, keepdim=True).clamp_min(0.0)
    total = torch.exp(values - shift).sum(dim=dim, keepdim=True) + torch.exp(-shift)
    return (shift + torch.log(total)).squeeze(dim)


def masked_log_sum_exp(values: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(sum_{mask} exp(values))`` along ``dim``, stable; 0 where the mask is empty (callers
    drop those rows), with finite gradients everywhere."""
    values = values.masked_fill(~mask, float("-inf"))
    nonempty = mask.any(dim=dim, keepdim=True)
    shift = values.detach().amax(dim=dim, keepdim=True)
    shift = torch.where(nonempty, shift, torch.zeros_like(shift))
    total = torch.exp(values - shift).sum(dim=dim, keepdim=True)
    total = torch.where(nonempty, total, torch.ones_like(total))
    return (shift + torch.log(total)).squeeze(dim)


def mean_over(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``keep``; 0 (still attached to the graph) when nothing is kept."""
    kept = torch.where(keep, values, torch.zeros_like(values))
    return kept.sum() / keep.sum().clamp_min(1)


def anchored_pair_stats(anchors: torch.Tensor, pairs: torch.Tensor,
                        num_real: Optional[int]) -> Dict[str, torch.Tensor]:
    """``tuples``, ``tuples_with_generated`` of an (A x B) bool mask of pairs (anchors[k], j)."""
    generated = generated_rows(pairs.shape[1], num_real, pairs.device)
    involves_generated = generated[anchors][:, None] | generated[None, :]
    return {"tuples": pairs.sum().detach(),
            "tuples_with_generated": (pairs & involves_generated).sum().detach()}


def row_stats(batch_size: int, num_real: Optional[int], device: torch.device
              ) -> Dict[str, torch.Tensor]:
    """For proxy/classification losses every row is one (sample, own proxy) tuple."""
    generated = 0 if num_real is None else batch_size - num_real
    return {"tuples": torch.full((), batch_size, dtype=torch.long, device=device),
            "tuples_with_generated": torch.full((), generated, dtype=torch.long, device=device)}


def mean_norm(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean L2 norm of the rows: the small regularizer of the lifted/N-pair losses on
    unnormalized embeddings (Revisiting-DML uses the norm, not its square)."""
    return embeddings.norm(dim=1).mean()


def cosine_to(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B x C) of the rows of ``embeddings`` to the rows of ``weights``.

    Same values as ``F.normalize(embeddings) @ F.normalize(weights).T``, but the embeddings' norms
    divide the small B x C result instead of the B x D input (C classes << D dimensions), which
    halves the time of the proxy losses' forward+backward.
    """
    norms = embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (embeddings @ F.normalize(weights, dim=1).T) / norms
