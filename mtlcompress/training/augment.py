"""Label-consistent augmentation for dense tasks."""

from __future__ import annotations

from typing import Any

import torch

# Tasks whose labels are images of the scene and flip with it as-is.
_SPATIAL_KEYS = ("image", "previous", "semseg", "parts", "depth", "edges", "saliency")


def random_hflip(batch: dict[str, Any], generator: torch.Generator, p: float = 0.5) -> dict[str, Any]:
    """Flip each sample left-right with probability ``p``; normals also negate x."""
    first = batch["image"]
    flip = torch.rand(first.shape[0], generator=generator) < p
    if not flip.any():
        return batch
    out = dict(batch)
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 3 or key not in (*_SPATIAL_KEYS, "normals"):
            continue
        flipped = value.clone()
        flipped[flip] = value[flip].flip(-1)
        if key == "normals":
            flipped[flip, 0] = -flipped[flip, 0]
        out[key] = flipped
    return out
