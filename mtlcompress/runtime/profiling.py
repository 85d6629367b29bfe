"""The shared engine's optional timing breakdown: per role (base task, sub-tasks, all
tasks in lockstep) and kind of work, plus the drift summary a stream reports."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch
from torch import Tensor

# Short names for the timing breakdown; the linear kinds follow ``models.taps``.
PROFILE_KIND_OF_LAYER = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
PROFILE_KINDS = ("embed", "qkv", "attention", "proj", "fc1", "fc2", "norm_act", "head")
ROLE_BASE, ROLE_SUB, ROLE_ALL = "base", "sub-tasks", "all tasks"  # ROLE_ALL: the lockstep row path


class SectionTimer:
    """Adds the wall time of a ``with`` block to ``seconds[kind]`` (synchronising CUDA)."""

    def __init__(self, seconds: defaultdict[str, float], kind: str, device: torch.device) -> None:
        self.seconds, self.kind, self.device = seconds, kind, device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> None:
        self._sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds[self.kind] += time.perf_counter() - self.start


NO_TIMER = contextlib.nullcontext()


def relative_drift(drifts: list[Tensor]) -> float:
    """Largest ``||x - x_propagated|| / ||x||`` over layers and tasks (one sync). Entries
    are either that ratio (a scalar) or ``[2, tasks, rows]`` per-row squared error and
    squared norm."""
    scalars = [d for d in drifts if d.dim() == 0]
    squares = [d for d in drifts if d.dim() == 3]
    parts = [torch.stack(scalars)] if scalars else []
    if squares:
        sums = torch.stack(squares).sum(dim=-1).sqrt()
        parts.append((sums[:, 0] / sums[:, 1].clamp_min(1e-12)).flatten())
    return float(torch.cat(parts).max()) if parts else 0.0

