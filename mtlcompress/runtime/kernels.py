"""Delta-linear kernels: the compute behind y_t = y_0 + dW_t x_0 + W_t dx + db_t.

A sub-task shares a linear layer ``y = W x + b`` with the base task. Given the base
output ``y_0 = W_0 x_0 + b_0`` it only has to add

    dW_t x_0        (sparse weight delta times the base input)
    W_t dx          (sub-task weight times the sparse activation delta dx = x_t - x_0)
    db_t            (bias delta)

Every function here is pure (no module state, no caches) and has a fast path plus a
plain fallback, in the torchao manner. The *reference* is always the plain dense
computation (``path="dense"`` in :func:`delta_linear`); the fast paths must agree with
it (to 1e-5 in fp32) and are kept separate from it, so that a simulated "sparse"
computation is never mistaken for a fast one (the DeltaCNN lesson).

Shape conventions: activations are ``[..., N, C]`` (tokens x channels) or, for the
matmuls, ``[..., in]`` with any number of leading dims; weights follow
``torch.nn.functional.linear``: ``[out, in]``. All kernels work on CPU and CUDA in
fp32, bf16 and fp16.

Sparsity of dx comes in two granularities (see :func:`threshold_delta`):

* ``"token"``: whole token rows are kept or dropped. Kept rows are gathered into one
  dense GEMM and scattered back; this is what actually runs fast.
* ``"element"``: individual entries are kept or dropped. Real speed-ups need very low
  densities; provided for completeness and for the cost model to rule in or out.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# The one definition of "changed" (shared with training and the dense engine) lives
# with the granularities, below the runtime.
from mtlcompress.models.activation_sparsity import Granularity, threshold_delta, token_rms
from mtlcompress.runtime.structured_kernels import BlockDelta, LowRankDelta, structured_delta_matmul

__all__ = [
    "DeltaPath",
    "Granularity",
    "DELTA_PATHS",
    "threshold_delta",
    "token_rms",
    "token_mask_of",
    "to_csr",
    "sparse_dense_matmul",
    "sparse_delta_weight_matmul",
    "dense_delta_weight_matmul",
    "delta_weight_matmul",
    "add_delta_weight_matmul_",
    "token_sparse_linear",
    "stacked_token_linear",
    "element_sparse_linear",
    "delta_linear",
    "LowRankDelta",
    "BlockDelta",
    "structured_delta_matmul",
]

DeltaPath = Literal["dense", "token", "element"]
DELTA_PATHS: tuple[str, ...] = ("dense", "token", "element")

# CPU sparse CSR matmul (MKL) only implements these; other dtypes may be computed in fp32.
_FULL_PRECISION = (torch.float32, torch.float64)


def token_mask_of(dx: Tensor) -> Tensor:
    """``[..., N]`` bool mask of token rows of ``dx [..., N, C]`` with any non-zero entry."""
    return dx.ne(0).any(dim=-1)


# --------------------------------------------------------------------------------------
# dW_t x_0: sparse weight delta times the base input.
# --------------------------------------------------------------------------------------
def _csr_matmul_supported(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type != "cpu" or dtype in _FULL_PRECISION


def to_csr(dense: Tensor) -> Tensor:
    """``dense`` in the sparse layout :func:`sparse_delta_weight_matmul` is fastest with:
    CSR with int32 indices. The CPU kernel (MKL) takes int32 and would convert torch's
    default int64 indices on every product (about 13 us per call for ViT-S layers on
    our 2-core machine, and a video frame makes over a hundred such calls)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        csr = dense.to_sparse_csr()
        if csr.values().numel() >= 2**31:
            return csr
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape,
                                       check_invariants=True)


def sparse_dense_matmul(sparse: Tensor, dense: Tensor) -> Tensor:
    """``sparse [R, K] @ dense [K, S]`` for CSR/COO ``sparse``, as a new row-major
    ``[R, S]``; fp32 compute where the backend lacks the dtype. Fastest with a row-major
    ``dense`` on CPU: MKL's row-major kernel takes it as it is (a column-major one is
    copied first; MKL's column-major kernel is 2-3x slower on ViT-S shapes)."""
    out_dtype = dense.dtype
    # CPU CSR lacks low precision; CUDA COO has it but accumulates in it (too inexact).
    needs_fp32 = (
        not _csr_matmul_supported(dense.device, dense.dtype)
        if sparse.layout == torch.sparse_csr
        else dense.dtype not in _FULL_PRECISION and dense.device.type != "cpu"
    )
    if needs_fp32:
        return torch.sparse.mm(sparse.to(torch.float32), dense.to(torch.float32)).to(out_dtype)
    if sparse.layout != torch.sparse_csr:
        return torch.sparse.mm(sparse, dense)
    # (No warning filter: torch's "CSR support is in beta" notice comes from making CSR
    # tensors, not from multiplying them, and this runs per layer and frame.) beta=0
    # writes the product over an empty result: torch.sparse.mm zero-fills it first.
    out = dense.new_empty(sparse.shape[0], dense.shape[1])
    return torch.addmm(out, sparse, dense, beta=0, out=out)


def sparse_delta_weight_matmul(x: Tensor, dw_sparse: Tensor) -> Tensor:
    """``x @ dW^T`` with ``dW`` a torch sparse tensor (fast path).

    Args:
        x: ``[..., in]`` input (usually the base activation ``x_0``).
        dw_sparse: ``[out, in]`` weight delta in sparse CSR layout (COO is accepted
            too). Convert it once at load time (:func:`to_csr`), not per call.

    Returns:
        ``[..., out]`` in ``x.dtype``. CPU CSR kernels (MKL) only exist for fp32/fp64,
        so bf16/fp16 CSR on CPU (and COO on CUDA, which would accumulate in low
        precision) are computed in fp32 and cast back. On CPU, CSR is ~10x faster
        than COO.
    """
    if dw_sparse.layout not in (torch.sparse_csr, torch.sparse_coo):
        raise TypeError(f"dw_sparse must be sparse CSR or COO, got layout {dw_sparse.layout}")
    if dw_sparse.shape[1] != x.shape[-1]:
        raise ValueError(f"dW has in_features {dw_sparse.shape[1]}, x has {x.shape[-1]}")
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    # dW [out, in] @ x^T [in, M] -> [out, M]; the transpose back is a view.
    out = sparse_dense_matmul(dw_sparse, x2d.t()).t()
    return out.reshape(*lead, dw_sparse.shape[0])


def dense_delta_weight_matmul(x: Tensor, dw_dense: Tensor) -> Tensor:
    """``x @ dW^T`` with a dense ``dW [out, in]``: the plain fallback / reference."""
    return F.linear(x, dw_dense)


def delta_weight_matmul(x: Tensor, dw: Tensor | None) -> Tensor | None:
    """``x @ dW^T`` for dW dense, sparse (CSR/COO), structured or ``None`` (returns ``None``)."""
    if dw is None:
        return None
    if isinstance(dw, (LowRankDelta, BlockDelta)):
        return structured_delta_matmul(x, dw)
    if dw.layout == torch.strided:
        return dense_delta_weight_matmul(x, dw)
    return sparse_delta_weight_matmul(x, dw)


def add_delta_weight_matmul_(out: Tensor, x: Tensor, dw: Tensor) -> Tensor:
    """``out += x @ dW^T`` in place, for rows ``x [M, in]`` and ``out [M, out]``, ``dW``
    dense, sparse or structured: the form per-row callers want, without a temporary for
    the product in the dense case or a copy of the sparse kernel's transposed result."""
    if isinstance(dw, (LowRankDelta, BlockDelta)):
        return dw.add_matmul_(out, x)
    if dw.layout == torch.strided:
        return out.addmm_(x, dw.t())
    out.t().add_(sparse_dense_matmul(dw, x.t()))
    return out


# --------------------------------------------------------------------------------------
# W_t dx with token-sparse dx: gather changed rows -> one dense GEMM -> scatter.
# --------------------------------------------------------------------------------------
def _flat_rows(dx: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
    if token_mask.shape != dx.shape[:-1]:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} must equal dx.shape[:-1] {tuple(dx.shape[:-1])}"
        )
    rows = dx.reshape(-1, dx.shape[-1])
    idx = token_mask.reshape(-1).nonzero().squeeze(1)
    return rows, idx


def _scatter_rows(values: Tensor, idx: Tensor, num_rows: int, lead: torch.Size) -> Tensor:
    out = values.new_zeros(num_rows, values.shape[-1])
    out = out.index_copy(0, idx, values)
    return out.reshape(*lead, values.shape[-1])


def token_sparse_linear(dx: Tensor, weight: Tensor, token_mask: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(dx, weight)`` computed only on the changed token rows.

    Gathers the rows where ``token_mask`` is true, runs one dense GEMM on them and
    scatters the result into a zero output.

    Args:
        dx: ``[M, in]`` (flattened tokens) or ``[..., N, in]``.
        weight: ``[out, in]``.
        token_mask: bool, shape ``dx.shape[:-1]``.
        bias: optional ``[out]``, added to the *changed rows only*. The delta identity
            adds the bias delta once for every token, so callers normally pass
            ``None`` here and add ``db`` separately.

    Returns:
        ``dx.shape[:-1] + (out,)``: equals ``F.linear(dx, weight)`` on changed rows and
        is exactly zero on unchanged rows (dx there is ignored, not assumed zero).
    """
    rows, idx = _flat_rows(dx, token_mask)
    values = F.linear(rows.index_select(0, idx), weight, bias)
    return _scatter_rows(values, idx, rows.shape[0], dx.shape[:-1])


def stacked_token_linear(deltas: Sequence[Tensor], masks: Sequence[Tensor], weight: Tensor) -> list[Tensor]:
    """:func:`token_sparse_linear` for several sub-tasks sharing ``weight``, in ONE GEMM.

    At ViT sequence lengths each sub-task's changed rows make a small GEMM whose fixed
    overhead eats the savings; stacking them amortises it.

    Args:
        deltas: per sub-task ``dx`` of shape ``[..., in]`` (leading shapes may differ).
        masks: per sub-task bool token mask, shape ``dx.shape[:-1]``.
        weight: shared ``[out, in]`` weight.

    Returns:
        Per sub-task ``dx.shape[:-1] + (out,)``, equal to separate
        ``token_sparse_linear(dx, weight, mask)`` calls (no bias).
    """
    if len(deltas) != len(masks):
        raise ValueError(f"got {len(deltas)} deltas but {len(masks)} masks")
    if not deltas:
        return []
    flats = [_flat_rows(dx, mask) for dx, mask in zip(deltas, masks)]
    gathered = torch.cat([rows.index_select(0, idx) for rows, idx in flats], dim=0)
    values = F.linear(gathered, weight)
    counts = [int(idx.numel()) for _, idx in flats]
    outputs = []
    for (rows, idx), part, dx in zip(flats, values.split(counts, dim=0), deltas):
        outputs.append(_scatter_rows(part, idx, rows.shape[0], dx.shape[:-1]))
    return outputs


# --------------------------------------------------------------------------------------
# W_t dx with element-sparse dx.
# --------------------------------------------------------------------------------------
def element_sparse_linear(dx: Tensor, weight: Tensor, mask: Tensor | None = None, *, use_sparse: bool = True) -> Tensor:
    """``F.linear(dx * mask, weight)`` for element-sparse ``dx``.

    Args:
        dx: ``[..., in]``.
        weight: ``[out, in]``.
        mask: bool, same shape as ``dx``; entries outside it are ignored. ``None``
            means "the non-zeros of dx".
        use_sparse: fast path (convert dx to sparse CSR and use ``torch.sparse.mm``;
            bf16/fp16 on CPU run in fp32). ``False`` is the plain dense fallback.

    Returns:
        ``[..., out]`` in ``dx.dtype``.
    """
    if mask is not None:
        if mask.shape != dx.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal dx shape {tuple(dx.shape)}")
        dx = torch.where(mask, dx, torch.zeros((), dtype=dx.dtype, device=dx.device))
    if not use_sparse:
        return F.linear(dx, weight)
    lead = dx.shape[:-1]
    rows = dx.reshape(-1, dx.shape[-1])
    if not _csr_matmul_supported(rows.device, rows.dtype):
        rows_sparse = rows.to(torch.float32)
        weight_t = weight.to(torch.float32).t()
    else:
        rows_sparse, weight_t = rows, weight.t()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        out = torch.sparse.mm(rows_sparse.to_sparse_csr(), weight_t)
    return out.to(dx.dtype).reshape(*lead, weight.shape[0])


# --------------------------------------------------------------------------------------
# The whole identity.
# --------------------------------------------------------------------------------------
def delta_linear(
    y0: Tensor,
    x0: Tensor,
    dx: Tensor,
    weight_t: Tensor,
    bias_delta: Tensor | None,
    dw: Tensor | None,
    *,
    path: DeltaPath,
    token_mask: Tensor | None = None,
) -> Tensor:
    """Sub-task output ``y_t = y_0 + dW_t x_0 + W_t dx + db_t`` of a shared linear layer.

    Args:
        y0: base output ``W_0 x_0 + b_0``, ``[..., N, out]``.
        x0: base input, ``[..., N, in]``.
        dx: thresholded activation delta ``x_t - x_0`` (see :func:`threshold_delta`),
            ``[..., N, in]``.
        weight_t: the sub-task weight ``W_t = W_0 + dW_t``, ``[out, in]``.
        bias_delta: ``db_t = b_t - b_0``, ``[out]``, or ``None``.
        dw: ``dW_t`` as a dense ``[out, in]`` tensor, a torch sparse CSR (or COO)
            tensor, or ``None`` when the weights are shared unchanged (also the
            temporal case ``y^f = y^{f-1} + W dx``).
        path: how ``W_t dx`` is computed:
            ``"dense"``: plain ``F.linear(dx, W_t)``: the *reference*; everything else
            must match it. It does not skip any work.
            ``"token"``: gather/GEMM/scatter over changed token rows
            (:func:`token_sparse_linear`).
            ``"element"``: sparse-CSR dx times ``W_t^T`` (:func:`element_sparse_linear`).
        token_mask: for ``path="token"``, the ``[..., N]`` mask from
            :func:`threshold_delta`; ``None`` derives it from the non-zero rows of dx.

    Returns:
        ``y_t`` with the shape and dtype of ``y0``. Note: the dense *reference* costs
        two GEMMs (``W_t dx`` and ``dW x_0``); when nothing is sparse enough, the
        runtime should instead run the layer plainly, ``F.linear(x_t, W_t, b_t)``,
        which is what the cost model prices as "dense".
    """
    if path == "dense":
        update = F.linear(dx, weight_t)
    elif path == "token":
        mask = token_mask_of(dx) if token_mask is None else token_mask
        update = token_sparse_linear(dx, weight_t, mask)
    elif path == "element":
        update = element_sparse_linear(dx, weight_t)
    else:
        raise ValueError(f"path must be one of {DELTA_PATHS}, got {path!r}")
    if dw is not None:
        if path == "dense":  # the reference never touches the sparse kernels
            update = update + dense_delta_weight_matmul(x0, _dense_of(dw))
        else:
            update = update + delta_weight_matmul(x0, dw)
    out = y0 + update
    if bias_delta is not None:
        out = out + bias_delta
    return out



def _dense_of(dw) -> Tensor:
    """The reference's dense ``dW`` of any operand kind."""
    if isinstance(dw, (LowRankDelta, BlockDelta)):
        return dw.dense()
    return dw if dw.layout == torch.strided else dw.to_dense()
