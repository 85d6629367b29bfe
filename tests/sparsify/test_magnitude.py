"""Exact-count top-k masks: the magnitude baseline and the snap to a target density."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.sparsify.magnitude import kept_count, magnitude_masks, project_to_density


def _total(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def _deltas(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.attn.qkv.weight": torch.randn(48, 16, generator=g),
        "blocks.0.mlp.fc1.weight": torch.randn(64, 16, generator=g) * 0.1,
        "blocks.0.mlp.fc1.bias": torch.randn(7, generator=g) * 10.0,
    }


@pytest.mark.parametrize("density", [0.0, 0.001, 0.013, 0.1, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_exact_total_count(density: float, scope: str) -> None:
    deltas = _deltas()
    n = sum(t.numel() for t in deltas.values())
    masks = magnitude_masks(deltas, density, scope=scope)
    assert _total(masks) == kept_count(n, density)
    for name, t in deltas.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == t.shape


def test_global_keeps_the_largest_magnitudes() -> None:
    deltas = _deltas()
    masks = magnitude_masks(deltas, 0.1)
    kept = torch.cat([deltas[k].abs().flatten()[masks[k].flatten()] for k in deltas])
    dropped = torch.cat([deltas[k].abs().flatten()[~masks[k].flatten()] for k in deltas])
    assert kept.min() > dropped.max()
    # Sign must not matter: a large negative delta is a large change.
    flipped = magnitude_masks({k: -v for k, v in deltas.items()}, 0.1)
    assert all(torch.equal(flipped[k], masks[k]) for k in deltas)


def test_global_follows_scale_but_per_tensor_shares_evenly() -> None:
    deltas = _deltas()
    glob = magnitude_masks(deltas, 0.1, scope="global")
    per = magnitude_masks(deltas, 0.1, scope="per_tensor")
    # The bias is 100x larger than fc1: global ranking gives it every slot it has.
    assert int(glob["blocks.0.mlp.fc1.bias"].sum()) == 7
    assert int(glob["blocks.0.mlp.fc1.weight"].sum()) == 0
    for name, t in deltas.items():
        share = 0.1 * t.numel()
        assert abs(int(per[name].sum()) - share) < 1.0
        kept = t.abs()[per[name]]
        if 0 < kept.numel() < t.numel():
            assert kept.min() > t.abs()[~per[name]].max()


def test_per_tensor_remainders_still_sum_to_the_global_count() -> None:
    # Three tensors of 5 at density 0.3: 1.5 each, round(4.5) = 5 total, not 3 * round(1.5).
    deltas = {f"t{i}": torch.arange(5, dtype=torch.float32) for i in range(3)}
    masks = magnitude_masks(deltas, 0.3, scope="per_tensor")
    assert _total(masks) == 5
    assert sorted(int(m.sum()) for m in masks.values()) == [1, 2, 2]


def test_ties_are_broken_by_position_deterministically() -> None:
    deltas = {"a": torch.tensor([1.0, 3.0, 3.0, 0.0]), "b": torch.tensor([3.0, 3.0, 2.0])}
    masks = magnitude_masks(deltas, 3 / 7)
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [True, False, False]
    assert all(torch.equal(masks[k], magnitude_masks(deltas, 3 / 7)[k]) for k in deltas)


def test_all_zero_deltas_still_give_the_requested_count() -> None:
    deltas = {"w": torch.zeros(10, 10), "b": torch.zeros(10)}
    masks = magnitude_masks(deltas, 0.05)
    assert _total(masks) == round(0.05 * 110)
    assert masks["w"].flatten()[:6].all() and not masks["b"].any()  # first positions win


def test_density_edges_and_validation() -> None:
    deltas = _deltas()
    assert _total(magnitude_masks(deltas, 0.0)) == 0
    assert all(m.all() for m in magnitude_masks(deltas, 1.0).values())
    assert magnitude_masks({}, 0.5) == {}
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            magnitude_masks(deltas, bad)
    with pytest.raises(ValueError):
        magnitude_masks(deltas, 0.5, scope="per_row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        project_to_density({"x": torch.tensor([1.0, float("nan")])}, 0.5)


def test_project_to_density_ranks_signed_scores() -> None:
    scores = {"log_alpha": torch.tensor([[-5.0, 4.0], [2.0, -1.0]]), "other": torch.tensor([3.0])}
    masks = project_to_density(scores, 0.4)  # round(0.4 * 5) = 2: the 4.0 and the 3.0
    assert masks["log_alpha"].tolist() == [[False, True], [False, False]]
    assert masks["other"].tolist() == [True]


def test_vit_small_sized_input_is_exact_and_fast() -> None:
    # ~22M elements, the size of a ViT-S backbone; half the values tie at zero.
    g = torch.Generator().manual_seed(0)
    big = torch.randn(11_000_000, generator=g)
    deltas = {"a": big.reshape(1000, 11000), "b": torch.zeros(11_000_000)}
    masks = magnitude_masks(deltas, 0.02)
    assert _total(masks) == round(0.02 * 22_000_000)
    assert not masks["b"].any()
