"""Reach a target delta density without hand-tuning an L0 coefficient.

The reference code sets the L0 coefficient by hand per task (1e-8..5e-8), which says
nothing about the density that comes out. Here the user states the density and a
Lagrangian controller finds the coefficient, as in Wang, Wohlwend & Lei, "Structured
Pruning of Large Language Models" (EMNLP 2020) and CoFi (Xia et al., ACL 2022):

    penalty(d) = lambda1 * (d - t) + lambda2 * (d - t) ** 2

where ``d`` is the expected density (expected L0 / number of gated weights) and ``t``
the target. Sign convention: the trainer *adds* ``penalty(d)`` to the loss it
minimises over the model and gate parameters, and the multipliers ``lambda1``,
``lambda2`` *maximise* the same quantity (gradient ascent; :meth:`make_optimizer`
returns an optimiser with ``maximize=True``). So ``lambda1`` grows while the model is
too dense, which pushes harder towards the target, and shrinks (may go negative) when
it is too sparse; ``lambda2`` only grows while ``d != t`` and acts as a stiffening
spring. Call ``loss.backward()`` once and step both optimisers.

An optional warm-up ramps the target linearly from ``initial_density`` (1.0: dense)
down to ``t`` over the first ``warmup_steps`` steps, so gates close gradually instead
of the task loss being swamped at step 0.

Landing on target: the constraint is on the *expected* density. Gates left half-open
at the end make the deterministic mask differ from it, so the trainer should finish
with :func:`mtlcompress.sparsify.magnitude.project_to_density` on the ``log_alpha``
scores (exact count). In the tests a toy run lands within a few percent of target
even before that snap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LagrangianDensityController"]


class LagrangianDensityController(nn.Module):
    """Learnable Lagrange multipliers that hold the expected density at a target.

    Its ``state_dict`` holds the two multipliers (and the target/warm-up, checked on
    load), so a resumed run continues with the same penalty strength; save the
    optimiser from :meth:`make_optimizer` alongside it.

    Args:
        target_density: final fraction of gated weights to keep, in ``(0, 1]``.
        warmup_steps: steps over which the target ramps from ``initial_density``
            down to ``target_density``; 0 disables the ramp.
        initial_density: start of the ramp (1.0 = everything kept, as at log-alpha
            init 5).
    """

    def __init__(
        self,
        target_density: float,
        *,
        warmup_steps: int = 0,
        initial_density: float = 1.0,
        ramp: str = "linear",
    ) -> None:
        super().__init__()
        if not (0.0 < target_density <= 1.0) or math.isnan(target_density):
            raise ValueError(f"target_density must be in (0, 1], got {target_density}")
        if not (0.0 < initial_density <= 1.0):
            raise ValueError(f"initial_density must be in (0, 1], got {initial_density}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.target_density = float(target_density)
        self.initial_density = float(initial_density)
        self.warmup_steps = int(warmup_steps)
        self.ramp = ramp
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def target_at(self, step: int) -> float:
        """Target density in force at optimisation step ``step`` (0-based)."""
        t = self.target_density
        n = self.warmup_steps
        if n <= 0 or step >= n:
            return t
        start = self.initial_density
        frac = max(step, 0) / n
        if self.ramp == "geometric":
            return start * (t / start) ** frac
        return start + (t - start) * frac

    def penalty(self, expected_density: Tensor, step: int | None = None) -> Tensor:
        """``lambda1 * (d - t) + lambda2 * (d - t)**2`` to add to the minimised loss.

        Args:
            expected_density: differentiable scalar, expected L0 / number of gates.
            step: current optimisation step, for the warm-up; ``None`` uses the
                final target.
        """
        target = self.target_density if step is None else self.target_at(step)
        gap = expected_density - target
        return self.lambda1.to(gap.dtype) * gap + self.lambda2.to(gap.dtype) * gap * gap

    def make_optimizer(self, lr: float = 0.01) -> torch.optim.Optimizer:
        """Adam over the multipliers with ``maximize=True`` (gradient *ascent*).

        Adam makes the multiplier speed independent of how small ``d - t`` is, so the
        same ``lr`` works for targets from 0.5% to 50%.
        """
        return torch.optim.Adam([self.lambda1, self.lambda2], lr=lr, maximize=True)

    def _config(self) -> dict[str, float | int]:
        return {
            "target_density": self.target_density,
            "initial_density": self.initial_density,
            "warmup_steps": self.warmup_steps,
        }

    def get_extra_state(self) -> dict[str, float | int]:
        return self._config()

    def set_extra_state(self, state: dict[str, float | int]) -> None:
        # Resuming towards a different target would silently change the run.
        if dict(state) != self._config():
            raise ValueError(
                f"controller checkpoint was made with {dict(state)}, this controller has "
                f"{self._config()}; build it with the checkpoint's settings to resume"
            )

    def extra_repr(self) -> str:
        return (
            f"target_density={self.target_density:g}, warmup_steps={self.warmup_steps}, "
            f"initial_density={self.initial_density:g}"
        )
