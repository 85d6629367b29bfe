"""Reach a target delta density without hand-tuning an L0 coefficient.

The reference code sets the L0 coefficient by hand per task (1e-8..5e-8), which says
nothing about the density that comes out. Here the user states the density and a
Lagrangian controller finds the coefficient, as in Wang, Wohlwend & Lei, "Structured
Pruning of Large Language Models" (EMNLP 2020) and CoFi (Xia et al., ACL 2022):

    penalty(d) = lambda1 * (d - t) + lambda2 * (d - t) ** 2

where ``d`` is the expected density (expected L0 / number of gated weights) and ``t``
the target in force at this step.

Sign convention: the trainer *adds* ``penalty(d)`` to the loss it minimises over the
model and gate parameters; the multipliers ``lambda1``, ``lambda2`` *maximise* the
same quantity (gradient ascent: :meth:`make_optimizer` returns Adam with
``maximize=True``). ``lambda1`` therefore grows while the model is too dense and
shrinks (may go negative, reopening gates) while it is too sparse; ``lambda2`` only
grows. One ``loss.backward()`` serves both; step both optimisers.

Why there is a damping term. Hard-concrete gates are a slow, lagging plant: a gate
at log-alpha 5 needs tens to hundreds of steps to close, and a closed gate gets no
task gradient, so only a negative multiplier reopens it. The pure Lagrangian above is
then an undamped oscillator: ``lambda1`` winds up while the gates lag, overshoots, and
the density ends far below target (measured on the toy problem in the tests: -30% to
-100%). ``damping = k`` adds ``k * |lambda1| / (2 t) * (d - t)**2`` (``lambda1``
detached), i.e. a restoring force ``k * |lambda1| * (d - t) / t`` proportional to the
*relative* error and scaled by the current multiplier, so it needs no knowledge of
the loss scale. With ``k = 0`` the controller is exactly Wang et al. / CoFi.

The warm-up ramps the target from ``initial_density`` (1.0: dense, as at init) down
to ``t`` over ``warmup_steps`` so gates close gradually; ``ramp="geometric"`` spends
equal time per factor of density, which matters for very small targets.

Exact target: the controller holds the *expected* density near ``t`` (within a few
percent on the toy problem); finish stage 1 with
:func:`mtlcompress.sparsify.magnitude.project_to_density` on the log-alphas for the
exact count.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Ramp = Literal["linear", "geometric"]

DEFAULT_DAMPING: float = 20.0
DEFAULT_LAMBDA_LR: float = 0.1

__all__ = ["DEFAULT_DAMPING", "DEFAULT_LAMBDA_LR", "LagrangianDensityController", "Ramp"]


class LagrangianDensityController(nn.Module):
    """Learnable Lagrange multipliers that hold the expected density at a target.

    The ``state_dict`` holds ``lambda1``, ``lambda2`` and the settings (as extra state,
    checked on load so a resume cannot silently change the target); save the
    optimiser from :meth:`make_optimizer` next to it. The warm-up position is the
    caller's global step, passed to :meth:`penalty`, so nothing else needs saving.

    Args:
        target_density: final fraction of gated weights to keep, in ``(0, 1]``.
        warmup_steps: steps over which the target ramps from ``initial_density``
            to ``target_density``; 0 disables the ramp.
        initial_density: start of the ramp.
        ramp: ``"linear"`` (Wang et al.) or ``"geometric"``.
        damping: relative proportional gain ``k`` (see module docstring); 0 gives
            the plain Lagrangian.
    """

    def __init__(
        self,
        target_density: float,
        *,
        warmup_steps: int = 0,
        initial_density: float = 1.0,
        ramp: Ramp = "linear",
        damping: float = DEFAULT_DAMPING,
    ) -> None:
        super().__init__()
        if not (0.0 < target_density <= 1.0) or math.isnan(target_density):
            raise ValueError(f"target_density must be in (0, 1], got {target_density}")
        if not (0.0 < initial_density <= 1.0) or math.isnan(initial_density):
            raise ValueError(f"initial_density must be in (0, 1], got {initial_density}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if ramp not in ("linear", "geometric"):
            raise ValueError(f"ramp must be 'linear' or 'geometric', got {ramp!r}")
        if not damping >= 0.0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.target_density = float(target_density)
        self.initial_density = float(initial_density)
        self.warmup_steps = int(warmup_steps)
        self.ramp: Ramp = ramp
        self.damping = float(damping)
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def target_at(self, step: int) -> float:
        """Target density in force at optimisation step ``step`` (0-based)."""
        t, n = self.target_density, self.warmup_steps
        if n <= 0 or step >= n:
            return t
        start = self.initial_density
        frac = max(step, 0) / n
        if self.ramp == "geometric":
            return start * (t / start) ** frac
        return start + (t - start) * frac

    def penalty(self, expected_density: Tensor, step: int | None = None) -> Tensor:
        """The term to add to the minimised loss (multipliers ascend on the same value).

        Args:
            expected_density: differentiable scalar, expected L0 / number of gates.
            step: current global optimisation step, for the warm-up; ``None`` uses
                the final target.
        """
        target = self.target_density if step is None else self.target_at(step)
        gap = expected_density - target
        lam1 = self.lambda1.to(gap.dtype)
        out = lam1 * gap + self.lambda2.to(gap.dtype) * gap * gap
        if self.damping > 0.0:
            out = out + (self.damping / (2.0 * target)) * lam1.detach().abs() * gap * gap
        return out

    def make_optimizer(self, lr: float = DEFAULT_LAMBDA_LR) -> torch.optim.Optimizer:
        """Adam over the multipliers with ``maximize=True`` (gradient *ascent*).

        Adam moves ``lambda1`` by about ``lr`` per step whatever the size of ``d - t``.
        Pick ``lr`` so the multiplier can reach its working value within the warm-up
        (roughly ``lr * warmup_steps`` above the final ``lambda1``; log ``lambda1``).
        """
        return torch.optim.Adam([self.lambda1, self.lambda2], lr=lr, maximize=True)

    def _config(self) -> dict[str, float | int | str]:
        return {
            "target_density": self.target_density,
            "initial_density": self.initial_density,
            "warmup_steps": self.warmup_steps,
            "ramp": self.ramp,
            "damping": self.damping,
        }

    def get_extra_state(self) -> dict[str, float | int | str]:
        return self._config()

    def set_extra_state(self, state: dict[str, float | int | str]) -> None:
        # Resuming towards a different target would silently change the run.
        if dict(state) != self._config():
            raise ValueError(
                f"controller checkpoint was made with {dict(state)}, this controller has "
                f"{self._config()}; build it with the checkpoint's settings to resume"
            )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._config().items())
