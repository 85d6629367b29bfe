"""``--base auto``: pick the task whose backbone is closest to all the others.

Sub-task deltas are ``W_t - W_base``; the base that minimises the summed distance to
the other tasks' weights leaves the least to encode (the weights most tasks agree on).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mtlcompress.models.checkpoint import load_checkpoint


def backbone_distances(checkpoints: Mapping[str, str | os.PathLike]) -> dict[str, dict[str, float]]:
    """Relative L2 distance ``||W_a - W_b|| / ||W_b||`` between every pair of backbones."""
    weights = {}
    for task, path in checkpoints.items():
        model, _ = load_checkpoint(path)
        weights[task] = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
    return {a: {b: float((weights[a] - weights[b]).norm() / weights[b].norm().clamp_min(1e-12))
                for b in weights if b != a} for a in weights}


def choose_base(checkpoints: Mapping[str, str | os.PathLike]) -> tuple[str, dict[str, float]]:
    """(best base task, summed distance to the others per candidate)."""
    distances = backbone_distances(checkpoints)
    totals = {task: sum(row.values()) for task, row in distances.items()}
    return min(totals, key=lambda task: (totals[task], task)), totals
