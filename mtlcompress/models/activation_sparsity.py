"""A task's activation-sparsity settings: which deltas below which threshold are
skipped, per layer. Sparsify writes them into checkpoints, the bundle stores them,
the runtime applies them, so they live below all three."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import math
from typing import Any, Literal

import torch
from torch import Tensor

from mtlcompress.errors import MtlCompressError
from mtlcompress.models.granularities import GRANULARITIES

Granularity = Literal["element", "token"]


@dataclass
class ActivationSparsity:
    """Per-layer thresholds on activation deltas (layer names from ``models.taps``).

    ``task_thresholds`` apply to ``x_t - x_base``; ``temporal_thresholds`` to
    ``x^f - x^{f-1}`` on video. A layer without a threshold is computed exactly.
    """

    granularity: str = "token"
    task_thresholds: dict[str, float] = field(default_factory=dict)
    temporal_thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ActivationSparsity:
        if not data:
            return cls()
        if not isinstance(data, dict) or data.get("granularity", "token") not in GRANULARITIES:
            raise MtlCompressError(f"activation sparsity must name a granularity in {GRANULARITIES}")
        def thresholds(key: str) -> dict[str, float]:
            values = data.get(key) or {}
            if not isinstance(values, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf
                    for v in values.values()):
                raise MtlCompressError(f"activation '{key}' must map layer names to finite non-negative numbers")
            return {str(k): float(v) for k, v in values.items()}
        return cls(granularity=data.get("granularity", "token"), task_thresholds=thresholds("task_thresholds"),
                   temporal_thresholds=thresholds("temporal_thresholds"))


# Thresholding: the one definition of "changed" shared by training and the runtime.
def threshold_delta(dx: Tensor, tau: float, granularity: Granularity) -> tuple[Tensor, Tensor]:
    """Sparsify an activation delta; the single definition of what counts as changed.

    Training penalties, the reference engine and the fast runtime all use this
    function, so a threshold means the same thing everywhere.

    Args:
        dx: activation delta ``x_t - x_0`` of shape ``[..., N, C]`` (tokens x channels).
        tau: threshold, ``>= 0``. ``tau = 0`` keeps everything.
        granularity:
            ``"element"``: keep entry ``dx[..., n, c]`` iff ``|dx[..., n, c]| >= tau``.
            The mask has the shape of ``dx``.
            ``"token"``: keep the whole row ``dx[..., n, :]`` iff its RMS,
            ``||dx[..., n, :]||_2 / sqrt(C)``, is ``>= tau`` (computed in fp32 for any
            input dtype). The mask has shape ``[..., N]``. The RMS (not the plain norm)
            makes tau independent of the width C, so one tau fits every layer.

    Returns:
        ``(dx_thresholded, mask)``: ``dx`` with dropped entries / rows set to exact
        zeros (same shape and dtype as ``dx``), and the boolean keep-mask.
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if granularity == "element":
        mask = dx.abs() >= tau
        return torch.where(mask, dx, torch.zeros((), dtype=dx.dtype, device=dx.device)), mask
    if granularity == "token":
        if dx.dim() < 2:
            raise ValueError(f"token granularity needs dx of shape [..., N, C], got {tuple(dx.shape)}")
        mask = token_rms(dx) >= tau
        kept = torch.where(mask.unsqueeze(-1), dx, torch.zeros((), dtype=dx.dtype, device=dx.device))
        return kept, mask
    raise ValueError(f"granularity must be 'element' or 'token', got {granularity!r}")


def token_rms(dx: Tensor) -> Tensor:
    """Per-row RMS ``||dx[..., n, :]||_2 / sqrt(C)`` in fp32: what token thresholds compare with."""
    return torch.linalg.vector_norm(dx, dim=-1, dtype=torch.float32) / math.sqrt(max(dx.shape[-1], 1))
