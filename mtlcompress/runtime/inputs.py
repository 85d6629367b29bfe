"""Checks every engine applies to what it is asked to run: the tasks and the images."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import MtlCompressError


def select_tasks(bundle: Bundle, tasks: Sequence[str] | None) -> list[str]:
    """Requested tasks in bundle order (all by default); unknown names are an error."""
    if not tasks:
        return list(bundle.tasks)
    unknown = [t for t in tasks if t not in bundle.tasks]
    if unknown:
        raise MtlCompressError(f"task(s) {', '.join(unknown)} not in the bundle (it has {', '.join(bundle.tasks)})")
    return [t for t in bundle.tasks if t in tasks]


def check_images(images: torch.Tensor, img_size: tuple[int, int]) -> None:
    """Images must be ``[B, 3, H, W]`` with ``(H, W) = img_size``: the backbone's fixed input."""
    height, width = img_size
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (height, width):
        raise MtlCompressError(f"images must be [B, 3, {height}, {width}] in [0, 1], got {tuple(images.shape)}")
