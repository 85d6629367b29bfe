"""Task heads: patch tokens -> a full-resolution prediction map.

A head is chosen by name (``HEADS``, stored in checkpoint metadata as ``head.type``)
and rebuilt from its sizes only: files carry weights, never code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import check_int_range

# Upper bounds for head sizes read from files: far above any dense task (ADE20K has 150
# classes), far below a head whose construction would exhaust memory.
MAX_HEAD_CHANNELS = 4096
MAX_HEAD_HIDDEN = 16384


def head_sizes_from_dict(head: Any, default_hidden: int = 128) -> tuple[int, int]:
    """(out_channels, hidden) from a file's ``{"out_channels", "hidden"}`` record, checked
    before any head is built from them."""
    if not isinstance(head, dict):
        raise CheckpointError("head must be a JSON object")
    if "out_channels" not in head:
        raise CheckpointError("head is missing the field 'out_channels'")
    out_channels, hidden = head["out_channels"], head.get("hidden", default_hidden)
    check_int_range("head field 'out_channels'", out_channels, 1, MAX_HEAD_CHANNELS)
    check_int_range("head field 'hidden'", hidden, 1, MAX_HEAD_HIDDEN)
    return out_channels, hidden


def head_type_from_dict(head: Any) -> str:
    """The head record's ``type`` (files written before heads had types: ``"dense"``)."""
    kind = head.get("type", "dense") if isinstance(head, dict) else None
    if kind not in HEADS:
        raise CheckpointError(f"head field 'type' is {kind!r}; known head types: {', '.join(HEADS)}")
    return kind


class DenseHead(nn.Module):
    """3x3 conv on the token grid, then a 1x1 conv to ``channels * patch**2`` and a
    pixel shuffle, so every pixel of a patch gets its own output.

    Heads are small and task-specific; they stay dense in a bundle.
    """

    def __init__(self, embed_dim: int, out_channels: int, patch_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.hidden = hidden
        self.conv = nn.Conv2d(embed_dim, hidden, kernel_size=3, padding=1)
        self.proj = nn.Conv2d(hidden, out_channels * patch_size * patch_size, kernel_size=1)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens ``[B, gh * gw, D]`` (row-major) -> map ``[B, C, gh * p, gw * p]``."""
        batch, num_tokens, dim = patch_tokens.shape
        rows, cols = grid
        features = F.gelu(self.conv(patch_tokens.transpose(1, 2).reshape(batch, dim, rows, cols)))
        # F.pixel_shuffle, as one strided copy: about 2.5x faster on CPU at our sizes.
        size = self.patch_size
        blocks = self.proj(features).view(batch, self.out_channels, size, size, rows, cols)
        return blocks.permute(0, 1, 4, 2, 5, 3).reshape(batch, self.out_channels, rows * size, cols * size)


class LinearHead(nn.Module):
    """A 1x1 convolution on the token grid, bilinearly upsampled to the image: the
    linear probe most ViT dense-prediction papers report. ``hidden`` is unused (kept so
    every head is built from the same sizes)."""

    def __init__(self, embed_dim: int, out_channels: int, patch_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.hidden = hidden
        self.proj = nn.Conv2d(embed_dim, out_channels, kernel_size=1)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens ``[B, gh * gw, D]`` (row-major) -> map ``[B, C, gh * p, gw * p]``."""
        batch, _, dim = patch_tokens.shape
        rows, cols = grid
        features = patch_tokens.transpose(1, 2).reshape(batch, dim, rows, cols)
        size = (rows * self.patch_size, cols * self.patch_size)
        return F.interpolate(self.proj(features), size=size, mode="bilinear", align_corners=False)


# Head name -> class, every class built as ``cls(embed_dim, out_channels, patch_size, hidden)``.
HEADS: dict[str, type[nn.Module]] = {"dense": DenseHead, "linear": LinearHead}


def build_head(kind: str, embed_dim: int, out_channels: int, patch_size: int, hidden: int = 128) -> nn.Module:
    if kind not in HEADS:
        raise CheckpointError(f"unknown head type '{kind}'; known head types: {', '.join(HEADS)}")
    return HEADS[kind](embed_dim, out_channels, patch_size, hidden)
