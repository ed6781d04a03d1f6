"""Tensor helpers shared by the batch miners and the criteria (no Python loop over samples).

Random choices among the ``True`` entries of each row of a mask are made with the Gumbel-max /
random-score trick (``argmax`` of a random score restricted to the mask), so a miner draws one
index per anchor for the whole batch in one call and never syncs with the host.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


class _Gram(torch.autograd.Function):
    """``x @ x.T`` whose backward is one matrix product, ``(g + g.T) @ x``, where autograd's
    generic matmul backward would compute two (one per operand)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (grad + grad.T) @ x


def gram(embeddings: torch.Tensor) -> torch.Tensor:
    """Matrix of inner products (B x B) of the rows, with the cheaper backward of :class:`_Gram`."""
    if not embeddings.requires_grad:
        return embeddings @ embeddings.T
    return _Gram.apply(embeddings)


def pairwise_distances(embeddings: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Euclidean distance matrix (B x B) from one matrix product.

    Written by hand rather than with ``torch.cdist`` because its backward is several times slower
    on CPU; squared distances are clamped at a tiny value so that the square root has a finite
    gradient on the diagonal (whose entries no loss uses).
    """
    inner = gram(embeddings)
    squared_norms = torch.diagonal(inner)
    squared_dists = squared_norms[:, None] + squared_norms[None, :] - 2.0 * inner
    squared_dists = squared_dists.clamp_min(1e-12)
    return squared_dists if squared else squared_dists.sqrt()


def label_masks(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask), both B x B bool."""
    same = labels[:, None] == labels[None, :]
    positives = same.clone()
    positives.fill_diagonal_(False)
    return positives, ~same


def random_choice(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One uniformly random column among the ``True`` entries of every row of ``mask``.

    Returns ``(index, has_any)``; ``index`` is arbitrary (0) for rows without a ``True`` entry.
    """
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    return scores.argmax(dim=1), mask.any(dim=1)


def weighted_choice(log_weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One column per row drawn with probability proportional to ``exp(log_weights)`` (Gumbel-max).

    Entries at ``-inf`` are never drawn; returns ``(index, has_any)``.
    """
    uniform = torch.rand(log_weights.shape, device=log_weights.device).clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(uniform))
    index = (log_weights + gumbel).argmax(dim=1)
    return index, torch.isfinite(log_weights).any(dim=1)


def stack_triplets(valid: torch.Tensor, positives: torch.Tensor,
                   negatives: torch.Tensor) -> torch.Tensor:
    """(T, 3) LongTensor of (anchor, positive, negative) for the anchors flagged in ``valid``.

    The one data-dependent size of a miner: selecting the valid anchors needs ``nonzero``.
    """
    anchors = valid.nonzero().squeeze(1)
    return torch.stack([anchors, positives[anchors], negatives[anchors]], dim=1)


def detached_distances(embeddings: torch.Tensor,
                       distances: Optional[torch.Tensor]) -> torch.Tensor:
    """The distance matrix a criterion passed in, or a fresh one; detached, float32."""
    if distances is None:
        distances = pairwise_distances(embeddings.detach().float())
    return distances.detach().float()


def inverse_sphere_log_density(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """log 1/q(d), q the density of distances between uniform points on the unit sphere S^{dim-1}.

    Wu et al. 2017, eq. 4: q(d) ~ d^(n-2) (1 - d^2/4)^((n-3)/2). Distances are clamped below 2 so
    that antipodal points give a finite value.
    """
    distances = distances.clamp(max=2.0 - 1e-4)
    return ((2.0 - dim) * torch.log(distances)
            - (dim - 3.0) / 2.0 * torch.log(1.0 - 0.25 * distances.pow(2)))
