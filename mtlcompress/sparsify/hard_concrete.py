"""Hard-concrete gates: the differentiable L0 relaxation behind sparse weight deltas.

Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
Regularization" (ICLR 2018). A gate ``z`` in ``[0, 1]`` is a stretched and clipped
binary-concrete sample, so it is *exactly* 0 or 1 with positive probability (real
sparsity during training) while ``log_alpha`` still receives gradients through the
reparameterisation. The constants are the ones the reference code of the method uses:
stretch ``(l, r) = (-1.5, 1.5)``, temperature ``beta = 1`` and ``log_alpha`` starting at
5, so every gate starts almost surely open and the delta ``z * w`` starts as ``w``.

Per-tensor gates: the reference code multiplies one extra scalar gate into every
element gate of a parameter tensor. Build it as ``HardConcreteGate(())`` and multiply
its ``forward()`` into the element gates; because the two are independent, the
expected number of non-zeros of that tensor is
``P(tensor gate open) * sum(P(element gate open))`` (see :func:`expected_l0`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlcompress.sparsify.magnitude import project_to_density

DEFAULT_STRETCH: tuple[float, float] = (-1.5, 1.5)
DEFAULT_BETA: float = 1.0
DEFAULT_LOG_ALPHA_INIT: float = 5.0
# Keeps log(u) and log(1 - u) finite; the value of the reference implementation.
_UNIFORM_EPS: float = 1e-6

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_LOG_ALPHA_INIT",
    "DEFAULT_STRETCH",
    "HardConcreteGate",
    "expected_l0",
    "hard_concrete_deterministic",
    "hard_concrete_sample",
    "prob_nonzero",
]


def _check_stretch(stretch: tuple[float, float], beta: float) -> tuple[float, float]:
    low, high = float(stretch[0]), float(stretch[1])
    if not (low < 0.0 and high > 1.0):
        raise ValueError(f"stretch must satisfy l < 0 and r > 1, got {stretch!r}")
    if beta <= 0.0:
        raise ValueError(f"beta must be positive, got {beta}")
    return low, high


def _compute_dtype(log_alpha: Tensor) -> torch.dtype:
    # Half-precision logits of u lose the tails that make gates exactly 0 or 1.
    return torch.promote_types(log_alpha.dtype, torch.float32)


def hard_concrete_sample(
    log_alpha: Tensor,
    *,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
    beta: float = DEFAULT_BETA,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one reparameterised gate per element of ``log_alpha``.

    ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, ``z = clamp(s*(r-l)+l, 0, 1)``
    with ``u ~ U(0, 1)``. Gradients flow to ``log_alpha`` wherever ``z`` is not clipped.

    Args:
        log_alpha: gate locations, any shape.
        stretch: ``(l, r)`` with ``l < 0 < 1 < r``; the stretch beyond ``[0, 1]`` is
            what gives the exact zeros and ones.
        beta: temperature.
        generator: optional RNG on ``log_alpha``'s device, for reproducible samples.

    Returns:
        Gates in ``[0, 1]``, same shape as ``log_alpha`` and in its compute dtype
        (at least float32).
    """
    low, high = _check_stretch(stretch, beta)
    dtype = _compute_dtype(log_alpha)
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=dtype)
    u = u.clamp_(_UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
    logistic_noise = torch.log(u) - torch.log1p(-u)
    s = torch.sigmoid((logistic_noise + log_alpha.to(dtype)) / beta)
    return (s * (high - low) + low).clamp(0.0, 1.0)


def hard_concrete_deterministic(
    log_alpha: Tensor,
    *,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
) -> Tensor:
    """The eval-time gate ``clamp(sigmoid(log_alpha) * (r - l) + l, 0, 1)``.

    It is exactly zero iff ``log_alpha <= log(-l / r)`` (``0`` for the symmetric
    default stretch), the point where a gate is open with probability 1/2 at
    ``beta = 1``.
    """
    low, high = _check_stretch(stretch, 1.0)
    dtype = _compute_dtype(log_alpha)
    return (torch.sigmoid(log_alpha.to(dtype)) * (high - low) + low).clamp(0.0, 1.0)


def prob_nonzero(
    log_alpha: Tensor,
    *,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
    beta: float = DEFAULT_BETA,
) -> Tensor:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))`` per element (differentiable)."""
    low, high = _check_stretch(stretch, beta)
    dtype = _compute_dtype(log_alpha)
    return torch.sigmoid(log_alpha.to(dtype) - beta * math.log(-low / high))


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates with learnable ``log_alpha``.

    ``forward()`` samples in training mode and returns the deterministic gate in eval
    mode, so the same call site serves training and export. Pass ``shape=()`` for the
    optional per-tensor gate.
    """

    def __init__(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        init_log_alpha: float = DEFAULT_LOG_ALPHA_INIT,
        stretch: tuple[float, float] = DEFAULT_STRETCH,
        beta: float = DEFAULT_BETA,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.stretch = _check_stretch(stretch, beta)
        self.beta = float(beta)
        self.init_log_alpha = float(init_log_alpha)
        self.log_alpha = nn.Parameter(
            torch.full(tuple(shape), self.init_log_alpha, device=device, dtype=dtype)
        )

    @property
    def num_gates(self) -> int:
        """Number of gated elements (1 for a per-tensor gate)."""
        return self.log_alpha.numel()

    def forward(self, generator: torch.Generator | None = None) -> Tensor:
        """Gates shaped like ``log_alpha``: a sample when training, deterministic in eval."""
        if self.training:
            return hard_concrete_sample(
                self.log_alpha, stretch=self.stretch, beta=self.beta, generator=generator
            )
        return hard_concrete_deterministic(self.log_alpha, stretch=self.stretch)

    def prob_nonzero(self) -> Tensor:
        """Per-element probability that the gate is open (differentiable)."""
        return prob_nonzero(self.log_alpha, stretch=self.stretch, beta=self.beta)

    def expected_l0(self) -> Tensor:
        """Expected number of open gates, a differentiable scalar."""
        return self.prob_nonzero().sum()

    @torch.no_grad()
    def mask(self, density: float | None = None) -> Tensor:
        """Boolean support of the gates.

        Args:
            density: ``None`` keeps the gates whose deterministic value is non-zero;
                a number keeps exactly ``round(density * num_gates)`` gates with the
                largest ``log_alpha`` (ties to the lower flat index), which is how the
                end of stage 1 snaps to an exact target.
        """
        if density is None:
            return hard_concrete_deterministic(self.log_alpha, stretch=self.stretch) > 0
        return project_to_density({"g": self.log_alpha.detach()}, density)["g"]

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.log_alpha.shape)}, stretch={self.stretch}, "
            f"beta={self.beta}, init_log_alpha={self.init_log_alpha}"
        )


def expected_l0(element_gate: HardConcreteGate, tensor_gate: HardConcreteGate | None = None) -> Tensor:
    """Expected non-zeros of ``tensor_gate * element_gate * w``.

    The gates are independent, so an element is non-zero iff both are open:
    ``P(tensor open) * sum_i P(element_i open)``. Gradients reach both ``log_alpha``s.
    """
    total = element_gate.expected_l0()
    if tensor_gate is None:
        return total
    if tensor_gate.num_gates != 1:
        raise ValueError(f"tensor_gate must hold one gate, got shape {tuple(tensor_gate.log_alpha.shape)}")
    return tensor_gate.prob_nonzero().reshape(()) * total
