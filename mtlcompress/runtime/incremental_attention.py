"""Softmax attention kept up to date while only some token rows change (video frames).

Per batch element, head and query row ``i`` we keep, in fp64,

    m_i = a reference score, at least every score in the sums below (the row's
          log-sum-exp when it was last computed in full),
    z_i = sum_j exp(s_ij - m_i),     n_i = sum_j exp(s_ij - m_i) v_j,

so that the attention output is ``n_i / z_i`` = ``softmax(s_i) v``. When the query, key
and value rows of a few tokens ``S`` change, every other query drops the old terms of
``S`` from its sums and adds the new ones: ``O(N |S| D)`` work instead of
``O(N^2 D)``. The queries in ``S`` are recomputed in full, as are rows a new score
would push past their reference and rows whose ``z_i`` mostly cancelled. Scores and
products run in fp32 (as in full attention) and the sums in fp64, so each update adds
about fp32 rounding of its own terms (each at most 1) to a row's error; the
recomputation rules keep that small against what remains of ``z_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AttentionSums", "full_attention", "update_attention"]

# A row is recomputed when an update leaves less than this share of the mass it had plus
# the mass it lost (cancellation would magnify the fp32 rounding of the removed terms),
# or when its total falls below the floor (a fresh row's total is 1).
_KEEP_SHARE = 0.25
_REFRESH_BELOW = 1e-3


@dataclass
class AttentionSums:
    """The running sums of one attention layer: ``[B, H, N]`` reference scores and
    totals, ``[B, H, N, D]`` weighted value sums (all fp64)."""

    reference: Tensor
    total: Tensor
    weighted: Tensor

    def output(self, dtype: torch.dtype) -> Tensor:
        """``n_i / z_i`` laid out as timm's attention output before its projection:
        ``[B, N, H * D]`` (heads concatenated per token)."""
        batch, heads, tokens, dim = self.weighted.shape
        out = torch.empty(batch, tokens, heads, dim, dtype=dtype, device=self.weighted.device)
        out.copy_(self.weighted.transpose(1, 2))
        return out.mul_(self.total.reciprocal().to(dtype).transpose(1, 2).unsqueeze(-1)).flatten(2)


def full_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, AttentionSums]:
    """``softmax(q k^T * scale) v`` for ``[B, H, N, D]`` inputs, as ``[B, N, H * D]``,
    with the sums that :func:`update_attention` continues from."""
    q, k, v = (t.contiguous() for t in (q, k, v))  # (views of a fused qkv tensor would be copied per use)
    out, reference = _attention_and_logsumexp(q, k, v, scale)
    return out.transpose(1, 2).flatten(2), _sums(out, reference)


def update_attention(sums: AttentionSums, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, k_old: Tensor,
                     v_old: Tensor, scale: float) -> Tensor:
    """Attention output (``[B, N, H * D]``) for the new ``q, k, v`` (``[B, H, N, D]``),
    given ``sums`` for the previous ones, which differ only at token ``positions``
    (``[S]``; ``k_old``, ``v_old``: ``[B, H, S, D]``, their previous keys and values).
    Updates ``sums``."""
    moved = positions.numel()
    q, k, v = (t.contiguous() for t in (q, k, v))  # (views of a fused qkv tensor would be copied per use)
    keys = torch.cat([k[:, :, positions], k_old], dim=2)
    values = torch.cat([v[:, :, positions], v_old], dim=2)
    # Scores key-major, [B, H, 2S, N]: a faster product for few keys, and sums over keys
    # that run along whole rows. Old scores are right for the queries that stayed.
    scores = (keys @ q.transpose(-1, -2) * scale).double()
    weights = torch.exp(scores - sums.reference.unsqueeze(-2))
    weights[:, :, moved:] *= -1  # old terms leave the sums
    removed = -weights[:, :, moved:].sum(dim=-2)
    low = (sums.total + removed) * _KEEP_SHARE  # below this, most of the row's mass has cancelled
    sums.total.add_(weights.sum(dim=-2))
    sums.weighted.flatten(0, 1).baddbmm_(weights.flatten(0, 1).transpose(1, 2), values.double().flatten(0, 1))
    # Recomputed in full: moved queries (new scores everywhere), rows with a new score
    # above their reference (terms over 1) and rows that lost most of their mass (the
    # rounding of the terms that cancelled would show).
    rows = torch.zeros(q.shape[2], dtype=torch.bool, device=q.device)
    rows[positions] = True
    stale = (scores[:, :, :moved].amax(dim=-2) > sums.reference) | (sums.total < low) | (sums.total < _REFRESH_BELOW)
    rows = (rows | stale.flatten(0, 1).any(dim=0)).nonzero().squeeze(1)
    fresh = _row_sums(q[:, :, rows], k, v, scale)
    sums.reference[:, :, rows] = fresh.reference
    sums.total[:, :, rows] = fresh.total
    sums.weighted[:, :, rows] = fresh.weighted
    return sums.output(q.dtype)


def _row_sums(q: Tensor, k: Tensor, v: Tensor, scale: float) -> AttentionSums:
    """The sums of the rows of ``q`` over all keys, from scratch. The reference is each
    row's log-sum-exp (above its largest score by the log of the total, which leaves
    room for new scores before a row must be recomputed), so the total is 1 and the
    weighted sum is the attention output itself."""
    return _sums(*_attention_and_logsumexp(q, k, v, scale))


def _sums(out: Tensor, logsumexp: Tensor) -> AttentionSums:
    return AttentionSums(logsumexp.double(), torch.ones(logsumexp.shape, dtype=torch.float64,
                                                        device=out.device), out.double())


def _attention_and_logsumexp(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention ``[B, H, N, D]`` and each row's log-sum-exp ``[B, H, N]``: from
    torch's fused CPU kernel, which returns both, where there is one; else computed."""
    if q.device.type == "cpu" and _FUSED_CPU is not None:
        out, logsumexp = _FUSED_CPU(q, k, v, 0.0, False, attn_mask=None, scale=scale)[:2]
        return out, logsumexp
    scores = (q * scale) @ k.transpose(-1, -2)
    largest = scores.amax(dim=-1, keepdim=True)
    weights = scores.sub_(largest).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    return (weights @ v).div_(total), (largest + total.log()).squeeze(-1)


# A private op (torch >= 2.3): the flash-attention CPU kernel behind
# scaled_dot_product_attention, which also returns the log-sum-exp.
_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
