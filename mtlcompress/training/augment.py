"""Label-consistent augmentation for dense tasks."""

from __future__ import annotations

from typing import Any

import torch

from mtlcompress.tasks.behaviour import flip_width
from mtlcompress.tasks.registry import get_task, task_names

# The input frames; every task label flips the way its registry entry says.
_IMAGE_KEYS = ("image", "previous")


def random_hflip(batch: dict[str, Any], generator: torch.Generator, p: float = 0.5) -> dict[str, Any]:
    """Flip each sample left-right with probability ``p``, labels as their tasks say."""
    first = batch["image"]
    flip = torch.rand(first.shape[0], generator=generator) < p
    if not flip.any():
        return batch
    tasks = task_names()
    out = dict(batch)
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 3 or key not in (*_IMAGE_KEYS, *tasks):
            continue
        flipped = value.clone()
        flipped[flip] = flip_width(value[flip]) if key in _IMAGE_KEYS else get_task(key).hflip(value[flip])
        out[key] = flipped
    return out
