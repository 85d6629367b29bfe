"""Hard-concrete gates: the statistics the L0 penalty and the masks rely on."""

from __future__ import annotations

import math

import pytest
import torch

from mtlcompress.sparsify.hard_concrete import (
    HardConcreteGate,
    expected_l0,
    hard_concrete_deterministic,
    hard_concrete_sample,
    prob_nonzero,
)

STRETCHES = [(-1.5, 1.5), (-0.1, 1.1)]


@pytest.mark.parametrize("stretch", STRETCHES)
@pytest.mark.parametrize("beta", [1.0, 2.0 / 3.0])
def test_empirical_open_rate_matches_prob_nonzero(stretch: tuple[float, float], beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    log_alpha = torch.linspace(-4.0, 4.0, 17)
    samples = 20_000
    z = hard_concrete_sample(
        log_alpha.expand(samples, -1), stretch=stretch, beta=beta, generator=g
    )
    empirical = (z > 0).float().mean(0)
    p = prob_nonzero(log_alpha, stretch=stretch, beta=beta)
    tolerance = 5 * torch.sqrt(p * (1 - p) / samples) + 1e-3  # 5 sigma
    assert torch.all((empirical - p).abs() < tolerance), (empirical, p)


def test_expected_l0_matches_mean_sampled_count() -> None:
    g = torch.Generator().manual_seed(1)
    gate = HardConcreteGate((50, 40))
    with torch.no_grad():
        gate.log_alpha.normal_(0.0, 3.0, generator=g)
    counts = torch.stack([(gate(generator=g) > 0).sum() for _ in range(400)]).float()
    expected = gate.expected_l0().item()
    std_of_mean = math.sqrt((gate.prob_nonzero() * (1 - gate.prob_nonzero())).sum().item() / 400)
    assert abs(counts.mean().item() - expected) < 5 * std_of_mean
    assert gate.num_gates == 2000


def test_samples_hit_exact_zero_and_exact_one() -> None:
    g = torch.Generator().manual_seed(2)
    z = hard_concrete_sample(torch.zeros(100_000), generator=g)
    assert z.min() == 0.0 and z.max() == 1.0
    # l = -1.5, r = 1.5, log_alpha = 0: z = 0 iff s <= 1/2, z = 1 iff s >= 5/6.
    assert abs((z == 0).float().mean().item() - 1 / 2) < 0.01
    assert abs((z == 1).float().mean().item() - 1 / 6) < 0.01
    assert ((z > 0) & (z < 1)).any()


def test_deterministic_gate_values() -> None:
    la = torch.tensor([-10.0, -1.0, 0.0, math.log(2.0), 1.0, 10.0])
    z = hard_concrete_deterministic(la)
    expected = (torch.sigmoid(la) * 3.0 - 1.5).clamp(0, 1)
    torch.testing.assert_close(z, expected)
    assert z[0] == 0 and z[2] == 0 and z[-1] == 1
    torch.testing.assert_close(z[3], torch.tensor(0.5))  # sigmoid(log 2) = 2/3 -> 0.5


def test_gradients_reach_log_alpha() -> None:
    g = torch.Generator().manual_seed(3)
    la = torch.zeros(1000, requires_grad=True)
    hard_concrete_sample(la, generator=g).sum().backward()
    assert la.grad is not None and (la.grad > 0).any()  # opening a gate raises z
    la.grad = None
    prob_nonzero(la).sum().backward()
    torch.testing.assert_close(la.grad, torch.full_like(la, 0.25))


def test_init_five_leaves_nearly_every_gate_open() -> None:
    gate = HardConcreteGate((10_000,))
    z = gate(generator=torch.Generator().manual_seed(4))
    assert (z > 0).float().mean() > 0.99
    assert gate.expected_l0().item() > 0.99 * gate.num_gates
    assert gate.mask().all()
    assert gate.eval()().eq(1).all()  # deterministic gate is fully open at init


def test_forward_samples_in_train_and_is_deterministic_in_eval() -> None:
    gate = HardConcreteGate((200,), init_log_alpha=0.5)
    a, b = gate(), gate()
    assert not torch.equal(a, b)
    gate.eval()
    torch.testing.assert_close(gate(), gate())
    torch.testing.assert_close(gate(), hard_concrete_deterministic(gate.log_alpha.detach()))


def test_mask_with_density_keeps_top_log_alpha() -> None:
    gate = HardConcreteGate((4, 5))
    with torch.no_grad():
        gate.log_alpha.copy_(torch.arange(20.0).reshape(4, 5) - 10.0)
    assert int(gate.mask().sum()) == 9  # log_alpha in 1..9 are > 0
    m = gate.mask(0.25)
    assert int(m.sum()) == 5 and m[3].all() and not m[:3].any()
    assert m.dtype == torch.bool


def test_tensor_gate_scales_expected_l0() -> None:
    elements = HardConcreteGate((30,), init_log_alpha=1.0)
    tensor_gate = HardConcreteGate((), init_log_alpha=-2.0)
    total = expected_l0(elements, tensor_gate)
    torch.testing.assert_close(total, torch.sigmoid(torch.tensor(-2.0)) * 30 * torch.sigmoid(torch.tensor(1.0)))
    total.backward()
    assert tensor_gate.log_alpha.grad is not None and elements.log_alpha.grad is not None
    # Empirically: the product gate is non-zero as often as the formula says.
    g = torch.Generator().manual_seed(5)
    draws = 4000
    z_tensor = hard_concrete_sample(tensor_gate.log_alpha.detach().expand(draws, 1), generator=g)
    z_elements = hard_concrete_sample(elements.log_alpha.detach().expand(draws, -1), generator=g)
    counts = ((z_tensor * z_elements) > 0).sum(1).float()
    assert abs(counts.mean().item() - total.item()) < 5 * counts.std().item() / math.sqrt(draws)
    with pytest.raises(ValueError):
        expected_l0(elements, HardConcreteGate((2,)))


def test_invalid_stretch_is_rejected() -> None:
    with pytest.raises(ValueError):
        HardConcreteGate((3,), stretch=(0.0, 1.5))
    with pytest.raises(ValueError):
        hard_concrete_sample(torch.zeros(3), beta=0.0)
