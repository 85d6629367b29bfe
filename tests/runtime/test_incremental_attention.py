"""Incremental attention equals full softmax attention after any sequence of row moves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlcompress.runtime import incremental_attention
from mtlcompress.runtime.incremental_attention import full_attention, update_attention

SCALE = 16 ** -0.5


def _inputs(batch: int = 2, heads: int = 3, tokens: int = 20, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=gen) for _ in range(3)]


def _reference(q, k, v, dtype=None):
    """Softmax attention, as ``[B, N, H * D]``."""
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def _move(q, k, v, positions, step, gen):
    """Change the rows at ``positions``; return the previous keys and values there."""
    k_old, v_old = k[:, :, positions].clone(), v[:, :, positions].clone()
    for t in (q, k, v):
        t[:, :, positions] += step * torch.randn(t[:, :, positions].shape, generator=gen)
    return k_old, v_old


@pytest.mark.parametrize("fused", [True, False])
def test_full_attention_is_softmax_attention(fused, monkeypatch):
    """With torch's fused CPU kernel (which also returns the log-sum-exp) and without."""
    if not fused:
        monkeypatch.setattr(incremental_attention, "_FUSED_CPU", None)
    elif incremental_attention._FUSED_CPU is None:
        pytest.skip("this torch has no fused CPU attention kernel")
    q, k, v = _inputs()
    out, sums = full_attention(q, k, v, SCALE)
    torch.testing.assert_close(out, _reference(q, k, v), atol=1e-6, rtol=1e-5)
    assert out.shape == (q.shape[0], q.shape[2], q.shape[1] * q.shape[3])
    # Each row's sums are taken against its log-sum-exp: the total is 1.
    scores = (q * SCALE) @ k.transpose(-1, -2)
    torch.testing.assert_close(sums.reference, scores.logsumexp(dim=-1).double(), atol=1e-5, rtol=1e-6)
    assert sums.total.dtype == torch.float64 and torch.allclose(sums.total, torch.ones_like(sums.total))


@pytest.mark.parametrize("step", [0.1, 3.0])
def test_updates_track_full_attention_over_many_frames(step):
    """Small moves, and large ones (new scores above the reference, totals that collapse)."""
    q, k, v = _inputs()
    _, sums = full_attention(q, k, v, SCALE)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        positions = torch.randperm(q.shape[2], generator=gen)[:3].sort().values
        k_old, v_old = _move(q, k, v, positions, step, gen)
        out = update_attention(sums, q, k, v, positions, k_old, v_old, SCALE)
        exact = _reference(q, k, v, torch.float64)
        assert (out.double() - exact).abs().max() <= 1e-6 * exact.abs().max().clamp_min(1.0) * 10


def test_a_dominant_key_coming_and_going_is_tracked():
    """One key that takes all attention, then leaves: the other rows' totals drop from ~1
    to almost nothing, which must trigger their recomputation, not lose precision. At
    the larger scale its scores would overflow exp() against the old references."""
    q, k, v = _inputs(batch=1)
    _, sums = full_attention(q, k, v, SCALE)
    position = torch.tensor([5])
    for scale in (40.0, 0.0, 4000.0, 0.0):
        k_old, v_old = k[:, :, position].clone(), v[:, :, position].clone()
        k[:, :, position] = scale * q.mean(dim=2, keepdim=True)
        out = update_attention(sums, q, k, v, position, k_old, v_old, SCALE)
        torch.testing.assert_close(out, _reference(q, k, v), atol=1e-5, rtol=1e-4)


def test_positions_moved_in_one_sequence_only():
    """Positions are the union over the batch; a sequence whose row did not move cancels exactly."""
    q, k, v = _inputs(batch=2)
    _, sums = full_attention(q, k, v, SCALE)
    positions = torch.tensor([2, 7])
    k_old, v_old = k[:, :, positions].clone(), v[:, :, positions].clone()
    k[0, :, positions] += 1.0
    v[0, :, positions] -= 1.0
    out = update_attention(sums, q, k, v, positions, k_old, v_old, SCALE)
    torch.testing.assert_close(out, _reference(q, k, v), atol=1e-6, rtol=1e-5)
