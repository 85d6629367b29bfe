"""The structured layouts (whole blocks, low rank): round trips, sizes, and untrusted parts refused."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle import layouts
from mtlcompress.bundle.structured_codecs import lowrank_factors
from mtlcompress.errors import BundleError


def _blocky() -> torch.Tensor:
    t = torch.zeros(16, 32)
    t[0:8, 8:16] = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    t[8:16, 24:32] = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    return t


def _lowrank() -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(24, 2, generator=gen) @ torch.randn(2, 40, generator=gen)


def test_auto_finds_blocks_and_low_rank_and_sizes_fit():
    blocks = layouts.encode(_blocky())
    assert blocks.layout == "block8x8" and torch.equal(layouts.decode(blocks), _blocky())
    assert blocks.nbytes == 2 * (64 * 4 + 4)
    assert layouts.nbytes_fit((16, 32), torch.float32, 128, "block8x8", blocks.nbytes)
    assert not layouts.nbytes_fit((16, 32), torch.float32, 129, "block8x8", blocks.nbytes)  # more than 2 blocks hold
    low = layouts.encode(_lowrank())
    assert low.layout == "lowrank" and low.nbytes == 2 * (24 + 40) * 4
    assert torch.allclose(layouts.decode(low), _lowrank(), atol=1e-5)
    assert not layouts.nbytes_fit((24, 40), torch.float32, 960, "lowrank", low.nbytes + 4)


def test_unstructured_tensors_keep_the_lossless_layouts():
    gen = torch.Generator().manual_seed(3)
    sparse = torch.randn(32, 64, generator=gen) * (torch.rand(32, 64, generator=gen) < 0.05)
    assert layouts.encode(sparse).layout in layouts.LAYOUTS
    assert layouts.encode(torch.randn(32, 64, generator=gen)).layout == "dense"


def _decode(encoded, **parts):
    return layouts.decode_parts(encoded.layout, encoded.shape, encoded.dtype, {**encoded.parts, **parts})


def test_block_parts_are_checked_before_use():
    encoded = layouts.encode(_blocky(), "block8x8")
    index = encoded.parts["block_indices"]
    with pytest.raises(BundleError, match="out of range"):
        _decode(encoded, block_indices=torch.tensor([1, 8], dtype=index.dtype))  # 2 x 4 blocks: 8 is past the end
    with pytest.raises(BundleError, match="strictly increasing"):
        _decode(encoded, block_indices=index.flip(0))
    with pytest.raises(BundleError, match="whole blocks"):
        _decode(encoded, values=encoded.parts["values"][:-1])
    with pytest.raises(BundleError, match="entries, expected"):
        _decode(encoded, block_indices=index[:1])
    with pytest.raises(BundleError, match="does not split"):
        layouts.decode_parts("block8x8", (12, 32), torch.float32, encoded.parts)


def test_lowrank_parts_are_checked_before_use():
    encoded = layouts.encode(_lowrank(), "lowrank")
    values = encoded.parts["values"]
    with pytest.raises(BundleError, match="rank r factors"):
        _decode(encoded, values=values[:-1])
    bad = values.clone()
    bad[3] = float("nan")
    with pytest.raises(BundleError, match="NaN or Inf"):
        _decode(encoded, values=bad)
    with pytest.raises(BundleError, match="rank r factors"):  # rank above min(rows, cols)
        layouts.decode_parts("lowrank", (2, 3), torch.float32, {"values": torch.ones(3 * 5)})


@pytest.mark.parametrize("rank", [1, 16, 17, 40])  # one sketch; the first sketch exactly full; grown once, twice
def test_lowrank_factors_find_the_rank_through_growing_sketches(rank):
    generator = torch.Generator().manual_seed(rank)
    view = torch.randn(200, rank, generator=generator) @ torch.randn(rank, 300, generator=generator)
    left, right = lowrank_factors(view)
    assert left.shape == (200, rank) and right.shape == (rank, 300)
    assert torch.allclose(left @ right, view, atol=1e-4 * float(view.abs().max()))
    if rank > 1:
        assert lowrank_factors(view, max_rank=rank - 1) is None


def test_lowrank_factors_above_the_useful_rank_fall_back_to_a_full_svd():
    """A 6 x 6 matrix of rank 5 is larger factored than dense; asked for, it still factors."""
    generator = torch.Generator().manual_seed(0)
    view = torch.randn(6, 5, generator=generator) @ torch.randn(5, 6, generator=generator)
    left, right = lowrank_factors(view)
    assert left.shape == (6, 5) and torch.allclose(left @ right, view, atol=1e-5)
    assert lowrank_factors(torch.randn(64, 64, generator=generator), max_rank=8) is None
