"""Every delta kernel must equal the plain dense computation it replaces."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlcompress.runtime.kernels import (
    add_delta_weight_matmul_,
    delta_linear,
    delta_weight_matmul,
    dense_delta_weight_matmul,
    element_sparse_linear,
    sparse_delta_weight_matmul,
    sparse_dense_matmul,
    stacked_token_linear,
    threshold_delta,
    token_mask_of,
    token_sparse_linear,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (dtype, atol, rtol): fp32 must match to 1e-5; low precision only loosely.
PRECISIONS = [
    (torch.float32, 1e-5, 1e-5),
    (torch.bfloat16, 6e-2, 3e-2),
    (torch.float16, 1e-2, 1e-2),
]
PRECISION_IDS = ["fp32", "bf16", "fp16"]
IN, OUT = 24, 40


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, gen: torch.Generator, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def _weight(gen: torch.Generator, device: str, dtype: torch.dtype, out: int = OUT, inp: int = IN) -> torch.Tensor:
    # Scaled so outputs are O(1) and absolute tolerances mean what they say.
    return (torch.randn(out, inp, generator=gen) / math.sqrt(inp)).to(device=device, dtype=dtype)


def _token_mask(shape: tuple[int, ...], density: float, gen: torch.Generator, device: str) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) < density).to(device)


def _reference_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 (fp64 for fp32 inputs) dense reference, so low-precision paths are judged fairly."""
    ref_dtype = torch.float64 if x.dtype == torch.float32 else torch.float32
    return F.linear(x.to(ref_dtype), w.to(ref_dtype))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------
# threshold_delta
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, IN), (2, 5, IN), (2, 3, 4, IN)])
def test_element_threshold_keeps_entries_at_or_above_tau(device, dtype, shape):
    dx = _randn(*shape, gen=_gen(1), device=device, dtype=dtype)
    out, mask = threshold_delta(dx, 0.5, "element")
    assert mask.dtype == torch.bool and mask.shape == dx.shape and out.dtype == dtype
    assert torch.equal(mask, dx.abs() >= 0.5)
    assert torch.equal(out[mask], dx[mask])
    assert torch.all(out[~mask] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(9, IN), (2, 6, IN), (2, 3, 5, IN)])
def test_token_threshold_is_row_rms(device, dtype, shape):
    gen = _gen(2)
    # Rows of very different scale so some pass and some do not.
    scale = torch.logspace(-2, 1, math.prod(shape[:-1]))[torch.randperm(math.prod(shape[:-1]), generator=gen)]
    dx = (torch.randn(shape, generator=gen) * scale.reshape(*shape[:-1], 1)).to(device=device, dtype=dtype)
    tau = 0.3
    out, mask = threshold_delta(dx, tau, "token")
    rms = dx.double().pow(2).mean(-1).sqrt()
    assert mask.shape == shape[:-1] and mask.dtype == torch.bool
    assert torch.equal(mask, rms >= tau)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(out[mask], dx[mask])
    assert torch.all(out[~mask] == 0)
    # The runtime recovers the same mask from the thresholded delta.
    assert torch.equal(token_mask_of(out), mask)


def test_thresholds_keep_values_exactly_at_tau():
    # RMS of a constant row c is |c|; C = 4 keeps sqrt exact.
    dx = torch.tensor([[0.5, -0.5, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]])
    _, token_mask = threshold_delta(dx, 0.5, "token")
    assert token_mask.tolist() == [True, False]
    _, element_mask = threshold_delta(dx, 0.5, "element")
    assert element_mask.tolist() == [[True] * 4, [False] * 4]


def test_threshold_zero_keeps_everything_and_bad_arguments_raise():
    dx = torch.randn(3, 5, IN, generator=_gen(3))
    dx[0, 0] = 0  # an all-zero row still counts as kept at tau = 0 (RMS 0 >= 0)
    for granularity in ("element", "token"):
        out, mask = threshold_delta(dx, 0.0, granularity)
        assert torch.equal(out, dx) and bool(mask.all())
    with pytest.raises(ValueError):
        threshold_delta(dx, -0.1, "token")
    with pytest.raises(ValueError):
        threshold_delta(dx, 0.1, "channel")


# --------------------------------------------------------------------------------------
# dW_t x_0
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_sparse_delta_weight_matmul_matches_dense(device, dtype, atol, rtol, density, layout):
    gen = _gen(4)
    dw = _weight(gen, device, dtype) * _token_mask((OUT, IN), density, gen, device)
    dw_sparse = dw.to_sparse_csr() if layout == "csr" else dw.to_sparse()
    x = _randn(2, 3, IN, gen=gen, device=device, dtype=dtype)
    expected = _reference_linear(x, dw)
    _assert_close(sparse_delta_weight_matmul(x, dw_sparse), expected, atol, rtol)
    _assert_close(dense_delta_weight_matmul(x, dw), expected, atol, rtol)
    assert sparse_delta_weight_matmul(x, dw_sparse).dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_delta_weight_matmul_non_contiguous_input(device):
    gen = _gen(5)
    dw = _weight(gen, device, torch.float32) * _token_mask((OUT, IN), 0.1, gen, device)
    x = _randn(IN, 4, 7, gen=gen, device=device).permute(1, 2, 0)  # [4, 7, IN], non-contiguous
    assert not x.is_contiguous()
    _assert_close(sparse_delta_weight_matmul(x, dw.to_sparse_csr()), _reference_linear(x, dw), 1e-5, 1e-5)
    assert delta_weight_matmul(x, None) is None
    with pytest.raises(TypeError):
        sparse_delta_weight_matmul(x, dw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("layout", ["csr", "coo"])
@pytest.mark.parametrize("order", ["row-major", "column-major"])
def test_sparse_dense_matmul_matches_dense(device, dtype, atol, rtol, layout, order):
    """The product is written over an empty result (no zero fill first): whatever that
    memory held must not leak into it, for either layout of the dense operand."""
    gen = _gen(12)
    dw = _weight(gen, device, dtype) * _token_mask((OUT, IN), 0.1, gen, device)
    dw[3] = 0  # an empty sparse row must come out as zeros
    sparse = dw.to_sparse_csr() if layout == "csr" else dw.to_sparse()
    dense = _randn(IN, 9, gen=gen, device=device, dtype=dtype)
    if order == "column-major":
        dense = dense.t().contiguous().t()
    garbage = torch.full((OUT, 9), float("nan"), dtype=dtype, device=device)
    del garbage  # (freed memory of the result's size: the allocator is likely to hand it out again)
    out = sparse_dense_matmul(sparse, dense)
    assert out.shape == (OUT, 9) and out.dtype == dtype and out.is_contiguous()
    _assert_close(out, _reference_linear(dense.t(), dw).t(), atol, rtol)
    assert torch.equal(out[3], torch.zeros_like(out[3]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("layout", ["dense", "csr", "coo"])
def test_add_delta_weight_matmul_accumulates_into_its_rows_only(device, dtype, atol, rtol, layout):
    gen = _gen(6)
    dw = _weight(gen, device, dtype) * _token_mask((OUT, IN), 0.1, gen, device)
    operand = {"dense": dw, "csr": dw.to_sparse_csr(), "coo": dw.to_sparse()}[layout]
    x = _randn(5, IN, gen=gen, device=device, dtype=dtype)
    stacked = _randn(9, OUT, gen=gen, device=device, dtype=dtype)  # out: one task's rows of a stacked output
    expected = stacked.clone()
    expected[2:7] += _reference_linear(x, dw).to(dtype)
    out = stacked[2:7]
    assert add_delta_weight_matmul_(out, x, operand) is out
    _assert_close(stacked, expected, atol, rtol)
    assert torch.equal(stacked[:2], expected[:2]) and torch.equal(stacked[7:], expected[7:])


# --------------------------------------------------------------------------------------
# Token-sparse W dx
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("shape", [(13, IN), (2, 9, IN), (2, 2, 5, IN)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_token_sparse_linear_matches_masked_dense(device, dtype, atol, rtol, shape, density):
    gen = _gen(6)
    dx = _randn(*shape, gen=gen, device=device, dtype=dtype)
    w = _weight(gen, device, dtype)
    mask = _token_mask(shape[:-1], density, gen, device)
    out = token_sparse_linear(dx, w, mask)
    assert out.shape == shape[:-1] + (OUT,) and out.dtype == dtype
    expected = _reference_linear(dx, w) * mask.unsqueeze(-1)
    _assert_close(out, expected, atol, rtol)
    # Unchanged tokens are exact zeros even though dx is non-zero there.
    assert torch.all(out[~mask] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_token_sparse_linear_non_contiguous_and_bias_only_on_changed_rows(device):
    gen = _gen(7)
    dx = _randn(IN, 3, 8, gen=gen, device=device).permute(1, 2, 0)  # [3, 8, IN]
    assert not dx.is_contiguous()
    w = _weight(gen, device, torch.float32)
    bias = _randn(OUT, gen=gen, device=device)
    mask = _token_mask((3, 8), 0.5, gen, device)
    out = token_sparse_linear(dx, w, mask, bias)
    expected = (F.linear(dx.double(), w.double(), bias.double())) * mask.unsqueeze(-1)
    _assert_close(out, expected, 1e-5, 1e-5)
    with pytest.raises(ValueError):
        token_sparse_linear(dx, w, mask.reshape(-1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS[:2], ids=PRECISION_IDS[:2])
def test_stacked_token_linear_equals_separate_calls(device, dtype, atol, rtol):
    gen = _gen(8)
    w = _weight(gen, device, dtype)
    shapes = [(11, IN), (2, 7, IN), (3, 4, IN), (5, IN)]
    densities = [0.4, 1.0, 0.0, 0.2]
    deltas = [_randn(*s, gen=gen, device=device, dtype=dtype) for s in shapes]
    deltas[1] = deltas[1].transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous member
    masks = [_token_mask(s[:-1], d, gen, device) for s, d in zip(shapes, densities)]
    stacked = stacked_token_linear(deltas, masks, w)
    assert len(stacked) == len(deltas)
    for got, dx, mask in zip(stacked, deltas, masks):
        separate = token_sparse_linear(dx, w, mask)
        assert got.shape == separate.shape
        torch.testing.assert_close(got, separate, atol=atol, rtol=rtol)
        _assert_close(got, _reference_linear(dx, w) * mask.unsqueeze(-1), atol, rtol)
    assert stacked_token_linear([], [], w) == []
    with pytest.raises(ValueError):
        stacked_token_linear(deltas, masks[:-1], w)


# --------------------------------------------------------------------------------------
# Element-sparse W dx
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("use_sparse", [True, False])
def test_element_sparse_linear_matches_masked_dense(device, dtype, atol, rtol, density, use_sparse):
    gen = _gen(9)
    dx = _randn(IN, 2, 6, gen=gen, device=device, dtype=dtype).permute(1, 2, 0)  # non-contiguous
    w = _weight(gen, device, dtype)
    mask = _token_mask(dx.shape, density, gen, device)
    out = element_sparse_linear(dx, w, mask, use_sparse=use_sparse)
    assert out.dtype == dtype
    _assert_close(out, _reference_linear(dx * mask, w), atol, rtol)
    # mask=None means "the non-zeros of dx".
    _assert_close(element_sparse_linear(dx * mask, w, use_sparse=use_sparse), _reference_linear(dx * mask, w),
                  atol, rtol)


# --------------------------------------------------------------------------------------
# The whole identity.
# --------------------------------------------------------------------------------------
def _shared_layer(device: str, dtype: torch.dtype, *, batch_shape: tuple[int, ...], granularity: str,
                  tau: float, weight_density: float, seed: int = 10):
    gen = _gen(seed)
    w0 = _weight(gen, device, torch.float32)
    b0 = _randn(OUT, gen=gen, device=device)
    dw = _weight(gen, device, torch.float32) * _token_mask((OUT, IN), weight_density, gen, device)
    db = 0.1 * _randn(OUT, gen=gen, device=device)
    x0 = _randn(*batch_shape, IN, gen=gen, device=device)
    raw = _randn(*batch_shape, IN, gen=gen, device=device) * _token_mask(batch_shape, 0.4, gen, device).unsqueeze(-1)
    dx, mask = threshold_delta(raw, tau, granularity)
    cast = [t.to(dtype) for t in (w0, b0, dw, db, x0, dx)]
    w0, b0, dw, db, x0, dx = cast
    return dict(w0=w0, b0=b0, dw=dw, db=db, x0=x0, dx=dx, mask=mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS[:2], ids=PRECISION_IDS[:2])
@pytest.mark.parametrize("path", ["dense", "token", "element"])
@pytest.mark.parametrize("dw_form", ["dense", "csr", "none"])
@pytest.mark.parametrize("batch_shape", [(10,), (2, 7)])
def test_delta_linear_reconstructs_the_sub_task_layer(device, dtype, atol, rtol, path, dw_form, batch_shape):
    granularity = "element" if path == "element" else "token"
    s = _shared_layer(device, dtype, batch_shape=batch_shape, granularity=granularity, tau=0.3,
                      weight_density=0.0 if dw_form == "none" else 0.1)
    w_t = s["w0"] + s["dw"]
    dw = {"dense": s["dw"], "csr": s["dw"].to_sparse_csr(), "none": None}[dw_form]
    y0 = F.linear(s["x0"], s["w0"], s["b0"])
    token_mask = s["mask"] if path == "token" else None
    y_t = delta_linear(y0, s["x0"], s["dx"], w_t, s["db"], dw, path=path, token_mask=token_mask)
    assert y_t.shape == y0.shape and y_t.dtype == dtype
    # Ground truth: the sub-task layer run plainly on x_t = x_0 + dx, in fp64.
    d = {k: v.double() for k, v in s.items() if k != "mask"}
    expected = F.linear(d["x0"] + d["dx"], d["w0"] + d["dw"], d["b0"] + d["db"])
    # Low precision: y0 itself was rounded, so compare against the fp32 reference path instead.
    if dtype != torch.float32:
        expected = delta_linear(y0.float(), s["x0"].float(), s["dx"].float(), w_t.float(), s["db"].float(),
                                None if dw is None else s["dw"].float(), path="dense").double()
    _assert_close(y_t, expected, atol, rtol)


def test_delta_linear_token_path_derives_mask_and_rejects_unknown_path():
    s = _shared_layer("cpu", torch.float32, batch_shape=(3, 6), granularity="token", tau=0.3, weight_density=0.1)
    w_t = s["w0"] + s["dw"]
    y0 = F.linear(s["x0"], s["w0"], s["b0"])
    ref = delta_linear(y0, s["x0"], s["dx"], w_t, s["db"], s["dw"], path="dense")
    derived = delta_linear(y0, s["x0"], s["dx"], w_t, s["db"], s["dw"].to_sparse_csr(), path="token")
    torch.testing.assert_close(derived, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        delta_linear(y0, s["x0"], s["dx"], w_t, s["db"], None, path="sparse")
