"""Structured weight deltas: whole blocks by norm and truncated SVD, at a byte budget."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle import layouts
from mtlcompress.errors import MtlCompressError
from mtlcompress.sparsify.structures import add_delta_, lowrank_rank, project_to_ranks, structured_deltas


def _deltas() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(64, 32, generator=gen), "b.weight": torch.randn(32, 128, generator=gen) * 3,
            "a.bias": torch.randn(64, generator=gen)}


def test_blocks_are_whole_chosen_by_norm_and_fit_the_byte_budget():
    deltas = _deltas()
    kept, record = structured_deltas(deltas, 0.1, "block", "4x4")
    assert record == {"structure": "block", "block": "4x4"}
    kept_norms, dropped_norms, stored = [], [], 0
    for name in ("a.weight", "b.weight"):
        blocks = kept[name].reshape(kept[name].shape[0] // 4, 4, -1, 4).permute(0, 2, 1, 3)
        nonzero = blocks.ne(0).flatten(2)
        assert bool((nonzero.all(-1) | ~nonzero.any(-1)).all()), "a block is kept in part"
        norms = deltas[name].reshape(blocks.shape[0], 4, -1, 4).permute(0, 2, 1, 3).pow(2).sum((2, 3))
        kept_norms.append(norms[nonzero.any(-1)])
        dropped_norms.append(norms[~nonzero.any(-1)])
        stored += layouts.encode(kept[name]).nbytes
    assert torch.cat(kept_norms).min() >= torch.cat(dropped_norms).max()
    budget = 0.1 * (64 * 32 + 32 * 128) * 4
    assert abs(stored - budget) <= 4 * 4 * 4 + 4  # within one block of the budget
    assert int(kept["a.bias"].ne(0).sum()) == round(0.1 * 64)  # 1-D: largest entries at the density


@pytest.mark.parametrize("density", [0.05, 0.2])
def test_lowrank_is_the_truncated_svd_at_the_budgets_rank(density):
    deltas = _deltas()
    kept, record = structured_deltas(deltas, density, "lowrank")
    for name, (rows, cols) in (("a.weight", (64, 32)), ("b.weight", (32, 128))):
        rank = lowrank_rank(rows, cols, density)
        assert record["ranks"][name] == rank >= 1
        assert int(torch.linalg.matrix_rank(kept[name])) == rank
        s = torch.linalg.svdvals(deltas[name])
        error = torch.linalg.matrix_norm(deltas[name] - kept[name])
        assert float(error) == pytest.approx(float(s[rank:].pow(2).sum().sqrt()), rel=1e-4)  # Eckart-Young
        encoded = layouts.encode(kept[name])
        assert encoded.layout == "lowrank" and encoded.nbytes == rank * (rows + cols) * 4
        assert torch.allclose(layouts.decode(encoded), kept[name], atol=1e-5)


def test_project_to_ranks_zero_rank_and_idempotence():
    deltas = _deltas()
    once = project_to_ranks(deltas, {"a.weight": 2, "b.weight": 0})
    assert not bool(once["b.weight"].any()) and torch.equal(once["a.bias"], deltas["a.bias"])
    twice = project_to_ranks(once, {"a.weight": 2})
    assert torch.allclose(twice["a.weight"], once["a.weight"], atol=1e-5)


def test_structured_weights_stage_and_finetune_keep_the_structure(quick_demo, tmp_path):
    from mtlcompress.models.checkpoint import load_checkpoint, read_checkpoint_info
    from mtlcompress.sparsify.stage_finetune import finetune_deltas
    from mtlcompress.sparsify.stage_weights import sparsify_weights
    from mtlcompress.training.loop import TrainConfig

    ckpts, data = quick_demo["checkpoints"], quick_demo["data"]
    with pytest.raises(MtlCompressError, match="--method magnitude"):
        sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=data, out=tmp_path / "x.safetensors",
                         structure="lowrank", show_progress=False)
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=data, out=stage1, density=0.1,
                     method="magnitude", structure="lowrank", show_progress=False)
    ranks = read_checkpoint_info(stage1).sparsity["ranks"]
    stage2 = tmp_path / "f.safetensors"
    finetune_deltas(base=ckpts["semseg"], task=stage1, data=data, out=stage2, show_progress=False,
                    config=TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=10**9))
    base, tuned = load_checkpoint(ckpts["semseg"])[0], load_checkpoint(stage2)[0]
    base_weights = dict(base.backbone.named_parameters())
    for name, weight in tuned.backbone.named_parameters():
        if name in ranks:
            delta = (weight - base_weights[name]).detach().reshape(weight.shape[0], -1)
            assert int(torch.linalg.matrix_rank(delta, rtol=1e-5)) <= ranks[name], name


def test_a_low_rank_delta_added_to_weights_is_still_stored_as_low_rank():
    """What export sees is ``(W_0 + A B) - W_0``: W's rounding, and entries the sum absorbed."""
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(96, 64, generator=gen) * 0.05  # ViT-like weights against a 1e-3 delta
    left = torch.randn(96, 2, generator=gen)
    left[0] *= 1e-9  # row 0 of the delta vanishes in base + delta
    delta = (left @ torch.randn(2, 64, generator=gen)) * 1e-3
    weight = add_delta_(torch.empty_like(base), base, delta)
    seen = weight - base
    assert bool(seen.ne(0).all())
    encoded = layouts.encode(seen)
    assert encoded.layout == "lowrank" and encoded.nbytes == 2 * (96 + 64) * 4
    assert torch.equal(layouts.decode(encoded).ne(0), seen.ne(0))


def test_the_block_sizes_offered_are_the_block_layouts_a_bundle_stores():
    from mtlcompress.bundle.structured_codecs import BLOCK_SHAPES
    from mtlcompress.sparsify.config import BLOCK_SIZES

    assert BLOCK_SIZES == tuple(f"{h}x{w}" for h, w in BLOCK_SHAPES)
