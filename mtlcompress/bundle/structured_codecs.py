"""The structured layouts' codecs: ``block<h>x<w>`` (whole ``h x w`` blocks) and ``lowrank``
(two thin factors). See :mod:`~mtlcompress.bundle.layouts` for the registry.

* ``block<h>x<w>``: ``block_indices`` (flat indices of the stored blocks in the
  ``[rows / h, cols / w]`` grid of blocks, strictly increasing) and ``values`` (each
  stored block's ``h * w`` entries, row-major, block after block). Zeros inside a stored
  block are stored too. Needs ``rows % h == 0`` and ``cols % w == 0``.
* ``lowrank``: ``values``, the factors ``A [rows, r]`` then ``B [r, cols]``, both
  row-major, concatenated; the tensor is ``A @ B`` (computed in float32). ``r`` is
  ``values.numel() / (rows + cols)``. Lossy by rounding only: :func:`lowrank_factors`
  accepts a tensor only when ``A @ B`` gives back its zeros exactly and every other
  entry within 1e-4 of its largest entry: a checkpoint stores ``W_0 + A B``, so the
  delta a bundle sees, ``(W_0 + A B) - W_0``, carries the rounding of ``W``.

Sizes: a structured layout's bytes follow from its unit count (blocks or rank), not from
the tensor's non-zeros: :func:`structured_nbytes` and :func:`structured_units`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from mtlcompress.bundle.sparse_codecs import layout_error, part_dtype

# The block shapes a bundle may hold (each its own layout name).
BLOCK_SHAPES: tuple[tuple[int, int], ...] = ((1, 16), (4, 4), (8, 8), (16, 16), (32, 32))
BLOCK_LAYOUTS: tuple[str, ...] = tuple(f"block{h}x{w}" for h, w in BLOCK_SHAPES)
LOWRANK = "lowrank"
# Relative to the largest entry: singular values below this are rounding (of W_0 + A B
# in a checkpoint), and the factors must give every entry back this closely.
_LOWRANK_TOLERANCE = 1e-4
_RANK_CUTOFF = 1e-5


def block_shape(layout: str) -> tuple[int, int]:
    """``(h, w)`` of a block layout's name, e.g. ``"block8x8"`` -> ``(8, 8)``."""
    match = re.fullmatch(r"block(\d+)x(\d+)", layout)
    if match is None:
        raise layout_error(layout, "not a block layout")
    return int(match.group(1)), int(match.group(2))


def block_numel(layout: str) -> int:
    h, w = block_shape(layout)
    return h * w


def fits_blocks(layout: str, rows: int, cols: int) -> bool:
    h, w = block_shape(layout)
    return rows > 0 and cols > 0 and rows % h == 0 and cols % w == 0


# ----------------------------------------------------------------------- sizes


def structured_units(layout: str, rows: int, cols: int, values: int) -> int | None:
    """Blocks (block layouts) or rank (lowrank) that ``values`` stored entries make; None if none."""
    if layout == LOWRANK:
        per = rows + cols
    else:
        h, w = block_shape(layout)
        per = h * w
    return values // per if per and values % per == 0 else None


def structured_nbytes(layout: str, rows: int, cols: int, dtype: torch.dtype, units: int) -> int:
    """Bytes of a structured layout holding ``units`` blocks, or rank ``units``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if layout == LOWRANK:
        return units * (rows + cols) * itemsize
    h, w = block_shape(layout)
    index = torch.empty((), dtype=part_dtype("flat", rows, cols, dtype)).element_size()
    return units * (h * w * itemsize + index)


def structured_fit(layout: str, rows: int, cols: int, dtype: torch.dtype, nnz: int, nbytes: int) -> bool:
    """Whether ``nbytes`` are whole blocks (or ranks) of a ``[rows, cols]`` tensor, at
    least one and at most the tensor, that can hold ``nnz`` non-zeros."""
    units, rest = divmod(nbytes, structured_nbytes(layout, rows, cols, dtype, 1))
    if layout == LOWRANK:
        return rest == 0 and 1 <= units <= min(rows, cols) and nnz <= rows * cols
    return rest == 0 and fits_blocks(layout, rows, cols) and nnz <= units * block_numel(layout) <= rows * cols


def smallest_structured(view: torch.Tensor, best: int) -> str | None:
    """The structured layout that stores ``view`` in fewer than ``best`` bytes, if any:
    blocks by counting the kept blocks; low rank by a factorisation that reproduces it."""
    rows, cols = view.shape
    found = None
    for name in BLOCK_LAYOUTS:
        if fits_blocks(name, rows, cols):
            size = structured_nbytes(name, rows, cols, view.dtype, int(kept_blocks(view, name).numel()))
            if size < best:
                found, best = name, size
    per_rank = structured_nbytes(LOWRANK, rows, cols, view.dtype, 1)
    if rows > 1 and cols > 1 and best > per_rank and lowrank_factors(view, max_rank=(best - 1) // per_rank):
        found = LOWRANK
    return found


# ------------------------------------------------------------------- encoders


def _block_grid(view: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[rows/h * cols/w, h, w]``: the view's blocks in flat block order."""
    rows, cols = view.shape
    return view.reshape(rows // h, h, cols // w, w).permute(0, 2, 1, 3).reshape(-1, h, w)


def kept_blocks(view: torch.Tensor, layout: str) -> torch.Tensor:
    """Flat indices of the blocks of ``view`` with a non-zero entry."""
    h, w = block_shape(layout)
    return _block_grid(view.ne(0), h, w).flatten(1).any(dim=1).nonzero().reshape(-1)


def encode_blocks(view: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
    rows, cols = view.shape
    if not fits_blocks(layout, rows, cols):
        raise layout_error(layout, f"a [{rows}, {cols}] view does not split into {layout[5:]} blocks")
    h, w = block_shape(layout)
    index = kept_blocks(view, layout)
    return {"block_indices": index.to(part_dtype("flat", rows, cols, view.dtype)),
            "values": _block_grid(view, h, w).index_select(0, index).reshape(-1)}


def lowrank_factors(view: torch.Tensor, max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, B)`` with ``A @ B`` equal to ``view`` (zeros exactly, the rest to rounding),
    of the smallest such rank up to ``max_rank``; None when no such rank exists.

    A random sketch ``view @ G`` (``G`` of ``k + 1`` columns) does the work: a rank-``r``
    matrix with ``r <= k`` has a negligible ``(k+1)``-th sketch singular value, and the
    sketch's first ``r`` left singular vectors span its columns, so ``A`` = those
    vectors and ``B = A^T view``; ``O(rows * cols * k)`` instead of a full SVD (seconds
    per ViT-B layer). ``k`` grows up to ``max_rank``, or without one up to the largest
    rank a factored tensor can have and still be smaller than dense; above that a full
    SVD decides.
    """
    rows, cols = view.shape
    limit = min(rows, cols) if max_rank is None else min(max_rank, rows, cols)
    if limit < 1 or not bool(view.ne(0).any()) or not bool(torch.isfinite(view).all()):
        return None
    work = view.to(torch.float64)
    sketch_rank = min(limit, max(1, (rows * cols - 1) // (rows + cols)))
    sketched = sketch_rank < min(rows, cols)
    factors = _sketched_factors(work, sketch_rank) if sketched else None
    if factors is None and (not sketched or limit > sketch_rank):
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
        rank = int((s > s[0] * _RANK_CUTOFF).sum())
        factors = (u[:, :rank] * s[:rank], vh[:rank]) if rank <= limit else None
    if factors is None:
        return None
    left, right = factors[0].to(view.dtype), factors[1].to(view.dtype).contiguous()
    rebuilt = lowrank_product(left, right, view.dtype)
    tolerance = _LOWRANK_TOLERANCE * float(view.abs().max())
    if not torch.equal(rebuilt.ne(0), view.ne(0)) or float((rebuilt - view).abs().max()) > tolerance:
        return None
    return left, right


def _sketched_factors(work: torch.Tensor, rank_bound: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Float64 factors of ``work`` from sketches of growing width (16, 64, ... columns, up
    to ``rank_bound + 1``, so a low rank costs a thin sketch); None when its rank is above
    ``rank_bound``."""
    generator = torch.Generator(device=work.device).manual_seed(0)
    width = min(16, rank_bound)
    while True:
        sketch = work @ torch.randn(work.shape[1], width + 1, dtype=torch.float64, device=work.device,
                                    generator=generator)
        singular = torch.linalg.svdvals(sketch)
        if float(singular[-1]) <= _RANK_CUTOFF * float(singular[0]):
            break
        if width == rank_bound:
            return None
        width = min(4 * width, rank_bound)
    u, singular, _ = torch.linalg.svd(sketch, full_matrices=False)
    rank = int((singular > singular[0] * _RANK_CUTOFF).sum())
    basis = u[:, :rank]
    return basis, basis.t() @ work


def lowrank_product(left: torch.Tensor, right: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``A @ B`` in float32 (the one rule both the encoder's check and the decoder use)."""
    return (left.to(torch.float32) @ right.to(torch.float32)).to(dtype)


def encode_lowrank(view: torch.Tensor) -> dict[str, torch.Tensor]:
    factors = lowrank_factors(view)
    if factors is None:
        raise layout_error(LOWRANK, "the tensor is not reproduced by its factors (non-finite or all zero)")
    left, right = factors
    return {"values": torch.cat([left.reshape(-1), right.reshape(-1)])}


# ------------------------------------------------------------------ validators


def validate_blocks(layout: str, parts: Mapping[str, torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """Flat positions of every stored value, in value order (checked before use)."""
    if not fits_blocks(layout, rows, cols):
        raise layout_error(layout, f"a [{rows}, {cols}] tensor does not split into {layout[5:]} blocks")
    h, w = block_shape(layout)
    index = parts["block_indices"].to(torch.int64)
    grid_cols, total = cols // w, (rows // h) * (cols // w)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= total):
        raise layout_error(layout, f"block index out of range [0, {total})")
    if bool((index[1:] <= index[:-1]).any()):
        raise layout_error(layout, "block indices not strictly increasing (duplicate or unsorted)")
    top = (index // grid_cols) * h
    left = (index % grid_cols) * w
    within = torch.arange(h, device=index.device).view(h, 1) * cols + torch.arange(w, device=index.device)
    return ((top * cols + left).view(-1, 1, 1) + within).reshape(-1)


def rebuild_lowrank(parts: Mapping[str, torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """The ``[rows, cols]`` view from checked factors."""
    values = parts["values"]
    rank = structured_units(LOWRANK, rows, cols, values.numel())
    if not rank or rank > min(rows, cols):
        raise layout_error(LOWRANK, f"{values.numel()} values are not rank r factors of a [{rows}, {cols}] "
                           f"tensor with 1 <= r <= {min(rows, cols)}")
    if not bool(torch.isfinite(values).all()):
        raise layout_error(LOWRANK, "factors hold NaN or Inf")
    left, right = values[:rows * rank].view(rows, rank), values[rows * rank:].view(rank, cols)
    return lowrank_product(left, right, values.dtype)


def split_lowrank(values: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [rows, r], B [r, cols])`` of a lowrank ``values`` part (already validated)."""
    rank = values.numel() // (rows + cols)
    return values[:rows * rank].view(rows, rank), values[rows * rank:].view(rank, cols)
