"""Top-k support selection: the magnitude baseline and the snap to an exact density.

Two users: the no-training baseline (keep the largest ``|W_t - W_0|`` entries) and the
end of stage 1, where learned ``log_alpha`` scores are projected onto exactly the
target number of non-zeros. Both need an *exact* count, so selection is a threshold
(``kthvalue``) plus a deterministic tie-break, never a Python loop over elements.

Tie-break (one rule everywhere): among equal scores, the entry that comes first wins,
ordering tensors by the mapping's iteration order and entries by flat (row-major)
index. The same inputs therefore always give the same mask, on any device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

Scope = Literal["global", "per_tensor"]

__all__ = ["Scope", "kept_count", "magnitude_masks", "project_to_density", "top_k_masks"]


def kept_count(numel: int, density: float) -> int:
    """Number of entries a ``density`` keeps out of ``numel``: ``round(density * numel)``.

    Rounds half up (not Python's banker's rounding) so the count is monotone in density.
    """
    _check_density(density)
    return min(numel, int(math.floor(density * numel + 0.5)))


def _check_density(density: float) -> None:
    if not (0.0 <= float(density) <= 1.0) or math.isnan(float(density)):
        raise ValueError(f"density must be in [0, 1], got {density}")


def _top_k_flat(flat: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor, ties to the lower index."""
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    # k-th largest == (n - k + 1)-th smallest; kthvalue avoids sorting all n values.
    threshold = torch.kthvalue(flat, n - k + 1).values
    keep = flat > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        tied = torch.nonzero(flat == threshold).squeeze(1)  # ascending flat indices
        keep[tied[:missing]] = True
    return keep


def _flatten(scores: Mapping[str, Tensor], use_abs: bool) -> tuple[Tensor, list[tuple[str, Tensor]]]:
    items = list(scores.items())
    device = items[0][1].device
    dtype = items[0][1].dtype
    for _, t in items[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        dtype = torch.promote_types(dtype, torch.float32)
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for _, t in items])
    if use_abs:
        flat.abs_()  # in place: one copy of ~N values, not two
    if torch.isnan(flat).any():
        bad = [name for name, t in items if torch.isnan(t).any()]
        raise ValueError(f"scores contain NaN (tensors: {', '.join(bad)})")
    return flat, items


def _split(flat_mask: Tensor, items: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    offset = 0
    for name, t in items:
        n = t.numel()
        out[name] = flat_mask[offset : offset + n].reshape(t.shape).to(t.device)
        offset += n
    return out


def _per_tensor_counts(sizes: list[int], density: float) -> list[int]:
    """Split ``round(density * sum(sizes))`` across tensors by largest remainder.

    Each tensor gets ``floor`` or ``ceil`` of ``density * size`` and the total is exact;
    leftover units go to the largest fractional parts, ties to the earlier tensor.
    """
    total = kept_count(sum(sizes), density)
    exact = [density * n for n in sizes]
    counts = [min(n, int(math.floor(e))) for n, e in zip(sizes, exact)]
    leftover = total - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order:
        if leftover <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            leftover -= 1
    return counts


def _select(scores: Mapping[str, Tensor], density: float, scope: str, use_abs: bool) -> dict[str, Tensor]:
    _check_density(density)
    if scope not in ("global", "per_tensor"):
        raise ValueError(f"scope must be 'global' or 'per_tensor', got {scope!r}")
    if not scores:
        return {}
    if scope == "per_tensor":
        counts = _per_tensor_counts([t.numel() for t in scores.values()], density)
        out: dict[str, Tensor] = {}
        for (name, t), k in zip(scores.items(), counts):
            flat, _ = _flatten({name: t}, use_abs)
            out[name] = _top_k_flat(flat, k).reshape(t.shape)
        return out
    flat, items = _flatten(scores, use_abs)
    return _split(_top_k_flat(flat, kept_count(flat.numel(), density)), items)


def project_to_density(
    scores: Mapping[str, Tensor],
    density: float,
    *,
    scope: Scope = "global",
) -> dict[str, Tensor]:
    """Keep the highest-scoring entries so exactly ``round(density * N)`` are True.

    Args:
        scores: name -> tensor of any score (e.g. ``log_alpha``); larger is kept first.
        density: fraction of all ``N`` entries to keep, in ``[0, 1]``.
        scope: ``"global"`` ranks all entries together; ``"per_tensor"`` gives each
            tensor its own share (``floor`` or ``ceil`` of ``density * numel``, with the
            remainders assigned so the total is still exact).

    Returns:
        name -> bool mask shaped and placed like the input tensor.

    Raises:
        ValueError: on a density outside ``[0, 1]``, an unknown scope, or NaN scores.
    """
    return _select(scores, density, scope, use_abs=False)


def magnitude_masks(
    deltas: Mapping[str, Tensor],
    density: float,
    *,
    scope: Scope = "global",
) -> dict[str, Tensor]:
    """The no-training baseline: keep the largest ``|delta|`` entries.

    Exactly ``round(density * N)`` entries are kept in total. An all-zero delta still
    gets that many entries (the first ones, by the tie-break rule), so the mask size
    always matches the requested density.
    """
    return _select(deltas, density, scope, use_abs=True)


def top_k_masks(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Exactly ``k`` of all entries (clamped to ``[0, N]``), the highest scores, ties by
    the same rule: the structured deltas' selection of whole blocks by their norm."""
    if not scores:
        return {}
    flat, items = _flatten(scores, use_abs=False)
    return _split(_top_k_flat(flat, max(0, min(int(k), flat.numel()))), items)
