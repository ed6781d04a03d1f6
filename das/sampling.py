"""Densely-Anchored Sampling (DAS; Liu et al., ECCV 2022).

DAS enlarges every training batch with generated embeddings ("dense anchors") before mining and the
loss. It keeps two statistics over the whole training run:

* Discriminative Feature Scaling (DFS): a per-class counter ``F`` (C x D). Each real row adds 1 at
  (its class, d) for each of its K largest dimensions d. A generated copy of a row multiplies the K
  dimensions counted most often for the row's class by factors drawn uniformly from [left, right).
* Memorized Transformation Shifting (MTS): per class, a bank of Q differences ``e_i - e_j``
  between two distinct rows of that class, written at a per-class pointer that wraps around. A
  generated row adds one difference drawn uniformly from its class's filled slots, times
  ``mts_scale``. Two write rules (``mts_bank``, ``--das_mts_bank``) differ only when one class
  brings more than Q pairs in one batch: ``published`` (default, the published
  ``MemoryBank.enqueue_dequeue``) puts that batch's last Q pairs in slots 0..Q-1 and leaves the
  pointer where it was, so later pushes do not overwrite the oldest entries; ``fifo`` pushes the
  pairs one by one into a true first-in-first-out ring (the last Q stay, the pointer moves on).

One step (``forward``): update F and the banks with the batch (so the batch's own statistics are
usable at once), then build ``num_produce`` generated copies of the batch and return
``[E; G_1; ...; G_n]`` with the labels repeated. Everything is tensor code on the embeddings'
device without host syncs (on CPU, where it costs nothing, the bank write uses a data-dependent
shape; accelerators use a fixed-size write with the same result). The state lives in registered
buffers so that it is saved in checkpoints, moved by ``.to(device)`` and, since every rank sees
the same global batch, stays identical across DDP ranks.

DAS sits between the backbone and the miner/criterion (see docs/ARCHITECTURE.md). Build it from
the command line with :func:`das.build_producer`; its options are declared in ``das/options.py``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Identical rows must never put a zero difference into a bank. On CPU the same-class differences
# are listed and checked exactly. On accelerators that list has a data-dependent length (a host
# sync), and comparing every pair element-wise costs B*B*D; instead each row gets integer
# fingerprints of its float bit pattern (exact integer dot products with fixed random weights).
# Identical rows always get identical fingerprints; two different rows collide with probability
# below 2**-20 per fingerprint, so about 2**-40 with two (then one genuine difference is dropped).
_FINGERPRINTS = 2
_FINGERPRINT_WEIGHT_BITS = 20  # |bits| < 2**31, so sums of up to 4096 terms stay below 2**63

# MTS bank write rules (see the module docstring and docs/DAS.md); the first is the default.
BANK_RULES = ("published", "fifo")


def check_settings(embed_dim: int, num_produce: int, dfs_num_scale: int, dfs_scale_left: float,
                   dfs_scale_right: float, mts_bank_size: int, mts_scale: float) -> None:
    """Refuse impossible DAS settings with a message naming the command-line options."""
    if num_produce < 1:
        raise ValueError(f"--das_num_produce must be at least 1 (got {num_produce})")
    if not 1 <= dfs_num_scale <= embed_dim:
        raise ValueError(
            f"--das_dfs_num_scale {dfs_num_scale} must be between 1 and --embed_dim {embed_dim}: "
            f"DFS scales that many of the embedding's dimensions")
    if dfs_scale_left > dfs_scale_right:
        raise ValueError(
            f"--das_dfs_scale_left {dfs_scale_left} is larger than --das_dfs_scale_right "
            f"{dfs_scale_right}: DFS draws its scale factors from [left, right)")
    if mts_bank_size < 1:
        raise ValueError(
            f"--das_mts_num_transformation_bank must be at least 1 (got {mts_bank_size})")
    if not mts_scale >= 0:
        raise ValueError(f"--das_mts_scale must be a non-negative number (got {mts_scale})")


class DenselyAnchoredSampling(nn.Module):
    """Adds DFS + MTS generated embeddings to a batch; see the module docstring and docs/DAS.md.

    Buffers (all part of ``state_dict``):
    ``dfs_counter`` (C x D, int64): how often each dimension was among a row's K largest, per class.
    ``mts_bank`` (C x Q x D, float32): each class's differences; slots ``0 .. fill-1`` hold data.
    ``mts_write_position`` (C, int64): the slot the class's next difference goes to (in [0, Q);
    the published pointer's value Q, reached when a push ends exactly at the bank's end, acts
    as 0 in every branch of its write, so it is stored as 0).
    ``mts_fill`` (C, int64): how many slots of the class's bank hold a difference (at most Q).

    Random draws use ``self.generator`` when set (it must live on the embeddings' device),
    otherwise torch's global RNG on that device. ``sample_scale_factors`` and
    ``sample_bank_slots`` are the only places that draw, so tests can override them.
    """

    def __init__(self, num_classes: int, embed_dim: int, num_produce: int = 3,
                 normalize: bool = True, dfs_num_scale: int = 4, dfs_scale_left: float = 0.5,
                 dfs_scale_right: float = 2.0, mts_bank_size: int = 10, mts_scale: float = 0.01,
                 detach: bool = False, aux_loss: bool = False,
                 aux_loss_weight: float = 1.0, mts_bank: str = "published") -> None:
        super().__init__()
        if num_classes < 1 or embed_dim < 1:
            raise ValueError(f"DAS needs at least one class and one embedding dimension "
                             f"(got num_classes={num_classes}, embed_dim={embed_dim})")
        if mts_bank not in BANK_RULES:
            raise ValueError(f"--das_mts_bank '{mts_bank}' is not one of {', '.join(BANK_RULES)}")
        self.mts_bank_rule = mts_bank
        check_settings(embed_dim, num_produce, dfs_num_scale, dfs_scale_left, dfs_scale_right,
                       mts_bank_size, mts_scale)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_produce = num_produce
        self.normalize = normalize
        self.dfs_num_scale = dfs_num_scale
        self.dfs_scale_left = float(dfs_scale_left)
        self.dfs_scale_right = float(dfs_scale_right)
        self.mts_bank_size = mts_bank_size
        self.mts_scale = float(mts_scale)
        self.detach = detach
        self.aux_loss = aux_loss
        self.aux_loss_weight = float(aux_loss_weight)
        self.generator: Optional[torch.Generator] = None
        # None: sync-free fixed-size bank writes on accelerators, compact ones on CPU (same result).
        self.sync_free_bank_writes: Optional[bool] = None
        self.stats: Dict[str, torch.Tensor] = {}

        self.register_buffer("dfs_counter", torch.zeros(num_classes, embed_dim, dtype=torch.long))
        self.register_buffer("mts_bank", torch.zeros(num_classes, mts_bank_size, embed_dim))
        self.register_buffer("mts_write_position", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("mts_fill", torch.zeros(num_classes, dtype=torch.long))
        weights = torch.randint(1, 2 ** _FINGERPRINT_WEIGHT_BITS, (_FINGERPRINTS, embed_dim),
                                generator=torch.Generator().manual_seed(0))
        self.register_buffer("fingerprint_weights", weights, persistent=False)
        # Dimension index used to break ties in the counter towards the lower dimension.
        self.register_buffer("tie_break", torch.arange(embed_dim - 1, -1, -1), persistent=False)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, "
                f"num_produce={self.num_produce}, normalize={self.normalize}, "
                f"dfs_num_scale={self.dfs_num_scale}, dfs_scale=[{self.dfs_scale_left}, "
                f"{self.dfs_scale_right}), mts_bank_size={self.mts_bank_size}, "
                f"mts_scale={self.mts_scale}, mts_bank={self.mts_bank_rule}, "
                f"detach={self.detach}, aux_loss={self.aux_loss}, "
                f"aux_loss_weight={self.aux_loss_weight}")

    # ----------------------------------------------------------------------------- random draws
    def sample_scale_factors(self, shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
        """DFS factors, uniform in [dfs_scale_left, dfs_scale_right)."""
        factors = torch.empty(shape, device=device)
        return factors.uniform_(self.dfs_scale_left, self.dfs_scale_right, generator=self.generator)

    def sample_bank_slots(self, fill: torch.Tensor, num_produce: int) -> torch.Tensor:
        """For each of ``num_produce`` copies of each row, a slot uniform in ``[0, fill)``.

        ``fill`` (B,) holds the bank fill of each row's class; where it is 0 the slot is 0 and the
        caller adds no shift. Returns (num_produce, B) int64.
        """
        uniform = torch.rand((num_produce, fill.shape[0]), device=fill.device,
                             generator=self.generator)
        slots = (uniform * fill).long()
        return torch.minimum(slots, (fill - 1).clamp(min=0))  # guard against rounding up to fill

    # ----------------------------------------------------------------------------- statistics
    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"DAS expects embeddings of shape (batch, {self.embed_dim}) "
                             f"(--embed_dim), got {tuple(embeddings.shape)}")
        if embeddings.shape[0] == 0:
            raise ValueError("DAS got an empty batch")
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"DAS expects one label per embedding row: got labels of shape "
                             f"{tuple(labels.shape)} for {embeddings.shape[0]} rows")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"DAS expects integer class labels, got {labels.dtype}")
        message = f"DAS labels must lie in [0, {self.num_classes}) (the number of training classes)"
        low, high = torch.aminmax(labels)
        if labels.device.type == "cpu":
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"{message}; got min {int(low)}, max {int(high)}")
        else:  # no host sync on accelerators: the check runs asynchronously on the device
            torch._assert_async((low >= 0) & (high < self.num_classes), message)

    def _fingerprints(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(H, B) int64 fingerprints of the rows' float32 bit patterns (+0.0 and -0.0 agree)."""
        bits = (embeddings + 0.0).contiguous().view(torch.int32).long()
        return torch.stack([(bits * weights).sum(1) for weights in self.fingerprint_weights])

    def _landing_slot(self, position: torch.Tensor, rank: torch.Tensor,
                      pairs: torch.Tensor) -> torch.Tensor:
        """Bank slot of the pair with push rank ``rank`` (0-based within its class this step) of a
        class whose pointer is at ``position`` and which brings ``pairs`` pairs (broadcast).
        Meaningful only for the class's last Q pairs (the ones kept)."""
        ring = (position + rank) % self.mts_bank_size
        if self.mts_bank_rule == "fifo":
            return ring
        # published: more than Q pairs replace the bank by the last Q, in slots 0..Q-1
        return torch.where(pairs > self.mts_bank_size, rank - (pairs - self.mts_bank_size), ring)

    def _next_position(self, position: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """The write pointer after a class at ``position`` pushed ``pairs`` pairs."""
        moved = (position + pairs) % self.mts_bank_size
        if self.mts_bank_rule == "fifo":
            return moved
        return torch.where(pairs > self.mts_bank_size, position, moved)  # published: stays

    def _use_sync_free_bank_writes(self, device: torch.device) -> bool:
        if self.sync_free_bank_writes is None:
            return device.type != "cpu"
        return self.sync_free_bank_writes

    @torch.no_grad()
    def update_statistics(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Steps 1 and 2 of DAS: count each row's K largest dimensions in F and push every
        ordered same-class difference of the batch into its class's bank.

        Push order within a class: pairs (i, j) in row-major batch order (i, then j). When a class
        brings more than Q pairs only its last Q land in the bank: in slots 0..Q-1 with the
        pointer unchanged (``published``), or as if pushed one by one (``fifo``).
        ``embeddings`` must be float32 (B x D); ``labels`` int64 (B,) on the same device.
        """
        # Step 1: DFS counter.
        largest = embeddings.topk(self.dfs_num_scale, dim=1, sorted=False).indices
        self.dfs_counter.index_put_(
            (labels.unsqueeze(1).expand_as(largest), largest),
            torch.ones_like(largest), accumulate=True)

        # Step 2: MTS banks. Pair (i, j) is pushed when rows i != j share a class and differ.
        same_class = labels.unsqueeze(1) == labels.unsqueeze(0)
        if self._use_sync_free_bank_writes(embeddings.device):
            fingerprints = self._fingerprints(embeddings)
            pushed = same_class & (fingerprints.unsqueeze(2) != fingerprints.unsqueeze(1)).any(0)
            kept, slot, pairs_of_class = self._bank_slots(labels, same_class, pushed)
            self._write_fixed_size(embeddings, labels, same_class, kept, slot)
            self.mts_write_position[labels] = self._next_position(
                self.mts_write_position[labels], pairs_of_class)
            self.mts_fill[labels] = (self.mts_fill[labels] + pairs_of_class).clamp(
                max=self.mts_bank_size)
            self.stats["mts_pairs_pushed"] = pushed.sum().float()
        else:
            self._push_pair_list(embeddings, labels, same_class)

    def _push_pair_list(self, embeddings: torch.Tensor, labels: torch.Tensor,
                        same_class: torch.Tensor) -> None:
        """The CPU bank write, on the list of same-class pairs (a data-dependent size costs no
        device-to-host sync on CPU, and the list needs fewer operations than B x B masks).

        ``nonzero`` lists pairs in row-major order, which is the push order; a pair's rank among
        its class's pairs comes from a running count per class. ``same_class`` is consumed (its
        diagonal is cleared in place).
        """
        capacity = self.mts_bank_size
        first, second = same_class.fill_diagonal_(False).nonzero(as_tuple=True)
        difference = embeddings[first] - embeddings[second]
        pair_class = labels[first]
        differs = difference.ne(0).any(1)  # identical rows give nothing
        if not bool(differs.all()):  # host checks are free on CPU; usually every pair differs
            difference, pair_class = difference[differs], pair_class[differs]
        one_hot = F.one_hot(pair_class, self.num_classes)
        running = one_hot.cumsum(0)
        pushed_per_class = running[-1] if len(pair_class) else one_hot.sum(0)
        rank = (running * one_hot).sum(1) - 1  # 0 for a class's first pair of this batch
        kept = rank >= pushed_per_class[pair_class] - capacity  # only the last Q of a class stay
        slot = self._landing_slot(self.mts_write_position[pair_class], rank,
                                  pushed_per_class[pair_class])
        if bool(kept.all()):
            self.mts_bank[pair_class, slot] = difference
        else:
            self.mts_bank[pair_class[kept], slot[kept]] = difference[kept]
        self.mts_write_position.copy_(self._next_position(self.mts_write_position,
                                                          pushed_per_class))
        self.mts_fill.add_(pushed_per_class).clamp_(max=capacity)
        self.stats["mts_pairs_pushed"] = torch.tensor(float(len(pair_class)))

    def _bank_slots(self, labels: torch.Tensor, same_class: torch.Tensor,
                    pushed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where each pushed pair lands, from B x B masks only (no loop, no sync).

        Returns ``kept`` (B x B: pushed and among the last Q of its class), ``slot`` (B x B: its
        bank slot, meaningful where kept) and ``pairs_of_class`` (B: pairs pushed into each row's
        class this step).
        """
        capacity = self.mts_bank_size
        pushed_long = pushed.long()
        same_long = same_class.long()
        pairs_per_row = pushed_long.sum(1)
        pairs_of_class = (same_long * pairs_per_row).sum(1)
        pairs_before_row = (same_long.tril(-1) * pairs_per_row).sum(1)
        ordinal = pairs_before_row.unsqueeze(1) + pushed_long.cumsum(1) - 1  # push order in class
        kept = pushed & (ordinal >= (pairs_of_class - capacity).unsqueeze(1))
        slot = self._landing_slot(self.mts_write_position[labels].unsqueeze(1), ordinal,
                                  pairs_of_class.unsqueeze(1))
        return kept, slot, pairs_of_class

    def _write_fixed_size(self, embeddings: torch.Tensor, labels: torch.Tensor,
                          same_class: torch.Tensor, kept: torch.Tensor, slot: torch.Tensor) -> None:
        """Bank write without host sync (for accelerators): every row rewrites its class's whole
        bank (B x Q x D), with the kept pair's difference where one lands and the old row elsewhere.
        Rows of one class write identical values, so the duplicate index is harmless."""
        batch = embeddings.shape[0]
        capacity = self.mts_bank_size
        device = embeddings.device
        first_row_of_class = same_class.long().argmax(1)  # first match: a batch-local class id
        pair_index = torch.arange(batch * batch, device=device)
        # Table (batch-local class id, slot) -> flat pair index i * B + j; unkept pairs write past
        # its end, each to its own cell, so every written cell has exactly one writer.
        target = torch.where(kept, first_row_of_class.unsqueeze(1) * capacity + slot,
                             batch * capacity + pair_index.view(batch, batch))
        source_pair = torch.full((batch * capacity + batch * batch,), -1, dtype=torch.long,
                                 device=device)
        source_pair.scatter_(0, target.view(-1), pair_index)
        source_pair = source_pair[:batch * capacity].view(batch, capacity)[first_row_of_class]
        has_source = source_pair >= 0
        source_pair = source_pair.clamp(min=0)
        difference = embeddings[source_pair // batch] - embeddings[source_pair % batch]
        self.mts_bank[labels] = torch.where(has_source.unsqueeze(-1), difference,
                                            self.mts_bank[labels])

    def chosen_dimensions(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) indices of the K dimensions counted most often for each row's class in F,
        most counted first; ties go to the lower dimension."""
        key = torch.add(self.tie_break, self.dfs_counter[labels], alpha=self.embed_dim)
        return key.topk(self.dfs_num_scale, dim=1).indices

    def normalized_frequency(self) -> torch.Tensor:
        """The DFS counter with each class's row divided by its maximum (C x D in [0, 1]; a
        class never seen is all zeros): the frequency matrix of the paper's figure, normalized
        as in the published ``others/visFRMClean`` data."""
        counter = self.dfs_counter.double()
        return (counter / counter.amax(dim=1, keepdim=True).clamp(min=1)).float()

    # ----------------------------------------------------------------------------- generation
    def generate(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Step 3: (num_produce, B, D) generated copies of the float32 ``embeddings`` from the
        current statistics (call :meth:`update_statistics` first)."""
        batch = embeddings.shape[0]
        produce = self.num_produce
        base = embeddings.detach() if self.detach else embeddings

        # MTS: E plus mts_scale times a stored difference (rows of empty banks get no shift).
        fill = self.mts_fill[labels]
        slots = self.sample_bank_slots(fill, produce)
        shift = self.mts_bank[labels.unsqueeze(0).expand(produce, -1), slots]
        shift_scale = (fill > 0).to(shift.dtype).mul_(self.mts_scale).view(1, batch, 1)
        generated = torch.addcmul(base.unsqueeze(0), shift, shift_scale)

        # DFS: the chosen dimensions hold the scaled value instead, plus the same shift. Written
        # in place into the K chosen entries only (one pass less over the B x D copies).
        dims = self.chosen_dimensions(labels).unsqueeze(0).expand(produce, -1, -1)
        factors = self.sample_scale_factors((produce, batch, self.dfs_num_scale), base.device)
        scaled = torch.addcmul(base.gather(1, dims[0]).unsqueeze(0) * factors,
                               shift.gather(2, dims), shift_scale)
        generated.scatter_(2, dims, scaled)
        if self.normalize:
            generated = F.normalize(generated, dim=-1)
        return generated

    def forward(self, embeddings: torch.Tensor,
                labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Update the statistics with the batch, then return ``[E; G_1; ...; G_n]`` (float32)
        and the labels repeated ``n + 1`` times. The first ``len(embeddings)`` rows are real."""
        self._check_inputs(embeddings, labels)
        labels = labels.to(device=embeddings.device, dtype=torch.long)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            real = embeddings.float()
            self.update_statistics(real.detach(), labels)
            generated = self.generate(real, labels)
        self.stats["real_generated_distance"] = (
            (generated.detach() - real.detach().unsqueeze(0)).norm(dim=-1).mean())
        self.stats["mts_bank_fill"] = self.mts_fill[labels].float().mean()
        all_embeddings = torch.cat([real, generated.reshape(-1, self.embed_dim)])
        return all_embeddings, labels.repeat(self.num_produce + 1)

    def compute_loss(self, criterion: nn.Module, embeddings: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """One DAS training step: ``L([E; G])``, or ``L(E) + w * L([E; G])`` with ``aux_loss``.

        The criterion's ``stats`` describe the call on the real and generated rows.
        """
        all_embeddings, all_labels = self(embeddings, labels)
        num_real = embeddings.shape[0]
        real_loss = None
        if self.aux_loss:
            real_loss = criterion(all_embeddings[:num_real], all_labels[:num_real],
                                  num_real=num_real)
        das_loss = criterion(all_embeddings, all_labels, num_real=num_real)
        self.stats["loss_with_generated"] = das_loss.detach()
        if real_loss is None:
            return das_loss
        self.stats["loss_real"] = real_loss.detach()
        return real_loss + self.aux_loss_weight * das_loss
