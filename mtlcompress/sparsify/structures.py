"""Structured weight deltas: whole blocks or low rank, at a storage budget in bytes.

``density`` is the delta's bytes relative to the dense tensor (float values): a
``h x w`` block costs its values plus one index, a rank costs ``rows + cols`` values.
So structures compare at equal bytes. Tensors a structure cannot cover (1-D ones,
shapes the block does not divide) keep their largest entries at the same density.

* ``block``: the blocks with the largest L2 norm of ``W_t - W_0``, ranked over every
  tensor together (like the magnitude baseline), each block's bytes counted.
* ``lowrank``: per tensor, the truncated SVD of ``W_t - W_0`` at
  ``r = round(density * rows * cols / (rows + cols))``, stored as the float32 product of
  its factors (what a bundle's ``lowrank`` layout reproduces).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from mtlcompress.sparsify.config import BLOCK_SIZES, STRUCTURES
from mtlcompress.sparsify.magnitude import kept_count, magnitude_masks, top_k_masks


__all__ = ["STRUCTURES", "BLOCK_SIZES", "parse_block", "lowrank_rank", "structured_deltas", "project_to_ranks",
           "keep_ranks_", "add_delta_"]


def parse_block(text: str) -> tuple[int, int]:
    """``"8x8"`` -> ``(8, 8)``."""
    height, width = text.split("x")
    return int(height), int(width)


def _view(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def lowrank_rank(rows: int, cols: int, density: float) -> int:
    """The rank whose factors take ``density`` of the dense tensor's bytes (rounded)."""
    return min(rows, cols, int(math.floor(density * rows * cols / (rows + cols) + 0.5)))


def _fallback(deltas: Mapping[str, Tensor], density: float) -> dict[str, Tensor]:
    masks = magnitude_masks(deltas, density, scope="per_tensor") if deltas else {}
    return {name: deltas[name] * masks[name] for name in deltas}


def _blocks(deltas: Mapping[str, Tensor], density: float, block: tuple[int, int]) -> dict[str, Tensor]:
    h, w = block
    covered = {n: d for n, d in deltas.items() if d.dim() >= 2 and _view(d).shape[0] % h == 0
               and _view(d).shape[1] % w == 0}
    out = _fallback({n: d for n, d in deltas.items() if n not in covered}, density)
    norms = {}
    for name, d in covered.items():
        rows, cols = _view(d).shape
        norms[name] = _view(d).reshape(rows // h, h, cols // w, w).pow(2).sum(dim=(1, 3))
    # Bytes of a block: its values and one index (int32 for any tensor below 2**31 entries).
    budget = sum(d.numel() for d in covered.values()) * density * 4
    keep = top_k_masks(norms, int(math.floor(budget / (h * w * 4 + 4) + 0.5)))
    for name, d in covered.items():
        mask = keep[name].repeat_interleave(h, 0).repeat_interleave(w, 1)
        out[name] = (_view(d) * mask).reshape(d.shape)
    return out


def _truncated(view: Tensor, rank: int) -> Tensor:
    u, s, vh = torch.linalg.svd(view.to(torch.float64), full_matrices=False)
    left = (u[:, :rank] * s[:rank]).to(view.dtype)
    return (left.to(torch.float32) @ vh[:rank].to(torch.float32)).to(view.dtype)


def _ranks(deltas: Mapping[str, Tensor], density: float) -> dict[str, int]:
    ranks = {}
    for name, d in deltas.items():
        rows, cols = _view(d).shape
        if d.dim() >= 2 and rows > 1 and cols > 1:
            ranks[name] = lowrank_rank(rows, cols, density)
    return ranks


def project_to_ranks(deltas: Mapping[str, Tensor], ranks: Mapping[str, int]) -> dict[str, Tensor]:
    """Each delta named in ``ranks`` replaced by its truncated SVD at that rank (0: zero)."""
    out = dict(deltas)
    for name, rank in ranks.items():
        d = deltas[name]
        out[name] = torch.zeros_like(d) if rank == 0 else _truncated(_view(d), rank).reshape(d.shape)
    return out


def structured_deltas(deltas: Mapping[str, Tensor], density: float, structure: str,
                      block: str = "8x8") -> tuple[dict[str, Tensor], dict[str, object]]:
    """The kept delta of every tensor for ``structure`` at ``density`` (of bytes), and what
    to record about it (the ranks of a low-rank delta, the block shape)."""
    kept_count(1, density)  # checks the range
    if structure == "block":
        return _blocks(deltas, density, parse_block(block)), {"structure": "block", "block": block}
    if structure == "lowrank":
        ranks = _ranks(deltas, density)
        out = _fallback({n: d for n, d in deltas.items() if n not in ranks}, density)
        out.update(project_to_ranks({n: deltas[n] for n in ranks}, ranks))
        return out, {"structure": "lowrank", "ranks": ranks}
    raise ValueError(f"structure must be 'block' or 'lowrank' here, got {structure!r}")


def add_delta_(weight: Tensor, base: Tensor, delta: Tensor) -> Tensor:
    """``weight = base + delta``, where no non-zero delta entry vanishes in the rounding
    of the sum: such an entry moves ``base`` by one unit of rounding instead, so the
    delta a bundle later sees, ``weight - base``, keeps the zeros of ``delta``
    (a low-rank delta has none, and its layout must give them back exactly)."""
    summed = base + delta
    absorbed = summed.eq(base) & delta.ne(0)
    toward = torch.where(delta[absorbed] > 0, torch.inf, -torch.inf).to(base.dtype)  # (base + delta is base)
    summed[absorbed] = torch.nextafter(base[absorbed], toward)
    return weight.copy_(summed)


def keep_ranks_(model: torch.nn.Module, base: torch.nn.Module, ranks: Mapping[str, int]) -> torch.nn.Module:
    """Project ``model``'s backbone delta from ``base`` back to ``ranks`` in place: fine-tuning
    a low-rank delta's entries (stage 2) leaves it full rank."""
    base_weights = dict(base.backbone.named_parameters())
    with torch.no_grad():
        weights = dict(model.backbone.named_parameters())
        deltas = {name: weights[name] - base_weights[name] for name in ranks}
        for name, delta in project_to_ranks(deltas, ranks).items():
            add_delta_(weights[name], base_weights[name], delta)
    return model
