"""The Lagrangian density controller lands on the density the user asked for."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.sparsify.density_control import LagrangianDensityController
from mtlcompress.sparsify.hard_concrete import HardConcreteGate

TARGETS = (0.01, 0.02, 0.05)


def _toy_run(
    targets: tuple[float, ...], *, damping: float, steps: int = 1500, warmup: int = 1000
) -> torch.Tensor:
    """20k hard-concrete gates per target, held open by a fake task loss.

    Gate i costs ``importance_i`` when closed; importances are log-normal (a few gates
    matter a lot, most barely), like per-weight saliencies. One gate tensor row per
    target so the three runs share each step. Optimisers follow the reference code
    (Adam, lr 0.1 on log-alphas).
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    importance = torch.exp(2.0 * torch.randn(len(targets), n, generator=g)) * 1e-5
    gates = HardConcreteGate((len(targets), n))
    controllers = [LagrangianDensityController(t, warmup_steps=warmup, damping=damping) for t in targets]
    gate_opt = torch.optim.Adam(gates.parameters(), lr=0.1)
    lambda_opts = [c.make_optimizer(lr=0.3) for c in controllers]
    for step in range(steps):
        z = gates(generator=g)
        task_loss = (importance * (1.0 - z)).sum()
        density = gates.prob_nonzero().mean(dim=1)
        loss = task_loss + sum(c.penalty(density[i], step) for i, c in enumerate(controllers))
        gate_opt.zero_grad()
        for opt in lambda_opts:
            opt.zero_grad()
        loss.backward()
        gate_opt.step()
        for opt in lambda_opts:
            opt.step()
    final = gates.mask().float().mean(dim=1)  # deterministic gates, not expectations
    print(f"targets {targets} damping {damping}: final densities {final.tolist()}")
    return final


@pytest.fixture
def one_thread():
    # Tiny tensors: thread hand-offs cost more than they save on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_toy_training_lands_within_ten_percent_of_target(one_thread: None) -> None:
    final = _toy_run(TARGETS, damping=20.0)
    target = torch.tensor(TARGETS)
    rel_error = (final - target).abs() / target
    assert torch.all(rel_error < 0.10), f"final densities {final.tolist()} for targets {TARGETS}"


@pytest.mark.slow
def test_undamped_lagrangian_misses_the_target(one_thread: None) -> None:
    # Why damping exists: the plain Wang et al. update overshoots on the same problem.
    final = _toy_run(TARGETS, damping=0.0)
    target = torch.tensor(TARGETS)
    assert torch.any((final - target).abs() / target > 0.10)


def test_sign_convention_lambda1_rises_when_too_dense_and_falls_when_too_sparse() -> None:
    for density, direction in ((0.3, 1.0), (0.02, -1.0)):
        ctrl = LagrangianDensityController(0.1)
        opt = ctrl.make_optimizer(lr=0.5)
        with torch.no_grad():
            ctrl.lambda1.fill_(1.0)
        before = ctrl.lambda1.item()
        d = torch.tensor(density, requires_grad=True)
        penalty = ctrl.penalty(d)
        opt.zero_grad()
        penalty.backward()
        opt.step()
        assert (ctrl.lambda1.item() - before) * direction > 0
        # The model side (minimising) is pushed towards the target.
        assert d.grad is not None and d.grad.item() * direction > 0


def test_penalty_value_and_damping_term() -> None:
    ctrl = LagrangianDensityController(0.1, damping=0.0)
    with torch.no_grad():
        ctrl.lambda1.fill_(2.0)
        ctrl.lambda2.fill_(3.0)
    d = torch.tensor(0.3)
    torch.testing.assert_close(ctrl.penalty(d), torch.tensor(2.0 * 0.2 + 3.0 * 0.04))
    damped = LagrangianDensityController(0.1, damping=10.0)
    damped.load_state_dict({**ctrl.state_dict(), "_extra_state": damped.get_extra_state()})
    extra = 10.0 / (2 * 0.1) * 2.0 * 0.04
    torch.testing.assert_close(damped.penalty(d), torch.tensor(0.52 + extra))


@pytest.mark.parametrize("lambda1", [2.0, -2.0, 0.5])
@pytest.mark.parametrize("density", [0.3, 0.05])
def test_damping_restores_towards_target_whatever_the_multipliers_sign(lambda1: float, density: float) -> None:
    # A gate can only reopen through a negative lambda1, so the damping term must use
    # |lambda1|: it adds k |lambda1| / (2t) (d - t)^2 >= 0, never a negative multiplier.
    target, k = 0.1, 10.0
    ctrl = LagrangianDensityController(target, damping=k)
    with torch.no_grad():
        ctrl.lambda1.fill_(lambda1)
    d = torch.tensor(density, requires_grad=True)
    penalty = ctrl.penalty(d)
    penalty.backward()
    gap = density - target
    torch.testing.assert_close(penalty.detach(), torch.tensor(lambda1 * gap + k * abs(lambda1) / (2 * target) * gap**2))
    # d(penalty)/dd: the plain Lagrangian plus a restoring force proportional to the relative error.
    torch.testing.assert_close(d.grad, torch.tensor(lambda1 + k * abs(lambda1) * gap / target))
    # The damping term is detached from lambda1: the multiplier still ascends on the gap alone.
    torch.testing.assert_close(ctrl.lambda1.grad, torch.tensor(gap))


def test_damping_during_warmup_is_relative_to_the_ramped_target() -> None:
    ctrl = LagrangianDensityController(0.1, warmup_steps=100, damping=10.0)
    with torch.no_grad():
        ctrl.lambda1.fill_(2.0)
    target = ctrl.target_at(50)  # 0.55
    gap = 0.8 - target
    expected = 2.0 * gap + 10.0 * 2.0 / (2 * target) * gap**2
    torch.testing.assert_close(ctrl.penalty(torch.tensor(0.8), step=50), torch.tensor(expected))


def test_warmup_ramps_from_dense_to_target() -> None:
    lin = LagrangianDensityController(0.02, warmup_steps=100)
    assert lin.target_at(0) == 1.0
    assert lin.target_at(50) == pytest.approx(0.51)
    assert lin.target_at(100) == lin.target_at(10_000) == 0.02
    geo = LagrangianDensityController(0.01, warmup_steps=100, ramp="geometric")
    assert geo.target_at(50) == pytest.approx(0.1)
    assert LagrangianDensityController(0.3).target_at(0) == 0.3
    # penalty() uses the ramped target: at step 0 a dense model is on target.
    assert lin.penalty(torch.tensor(1.0), step=0).item() == 0.0


def test_state_dict_round_trip_and_mismatch() -> None:
    ctrl = LagrangianDensityController(0.02, warmup_steps=10)
    with torch.no_grad():
        ctrl.lambda1.fill_(4.5)
        ctrl.lambda2.fill_(1.5)
    resumed = LagrangianDensityController(0.02, warmup_steps=10)
    resumed.load_state_dict(ctrl.state_dict())
    assert resumed.lambda1.item() == 4.5 and resumed.lambda2.item() == 1.5
    with pytest.raises(ValueError, match="checkpoint"):
        LagrangianDensityController(0.05, warmup_steps=10).load_state_dict(ctrl.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_density": 0.0},
        {"target_density": 1.5},
        {"target_density": 0.1, "warmup_steps": -1},
        {"target_density": 0.1, "ramp": "cosine"},
        {"target_density": 0.1, "damping": -1.0},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LagrangianDensityController(**kwargs)
