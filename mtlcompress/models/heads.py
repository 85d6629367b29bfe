"""Task heads: patch tokens -> a full-resolution prediction map.

A head is chosen by name (``HEADS``, stored in checkpoint metadata as ``head.type``)
and rebuilt from its sizes only: files carry weights, never code. Two kinds read more
than the last block: ``multilevel`` (the outputs of the blocks named by ``layers``) and
``module`` (a user's class, built by a factory that is imported by the path the file
names, only where that module is installed and allowed: ``models.head_module``).

Every head is called as ``head(features, grid)``: ``features`` is the final-norm patch
tokens ``[B, N, D]``, or for a head with ``layers`` a list of them, one per layer;
``grid`` is the token grid (an int side today).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import check_int_range
from mtlcompress.models.head_module import build_module_head, check_module_path

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


def head_layers_from_dict(head: Any, depth: int) -> tuple[int, ...] | None:
    """The record's ``layers`` (1-based block indices, increasing, each in ``1..depth``),
    or ``None`` for a head that reads the last block only. ``multilevel`` heads need them."""
    layers = head.get("layers") if isinstance(head, dict) else None
    if layers is None:
        if isinstance(head, dict) and head.get("type") == "multilevel":
            raise CheckpointError("a multilevel head needs the field 'layers'")
        return None
    if not isinstance(layers, list) or not layers or len(layers) > depth:
        raise CheckpointError(f"head field 'layers' must be a list of 1 to {depth} block indices")
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= depth:
            raise CheckpointError(f"head field 'layers' names block {index!r:.20}; the backbone has blocks 1 to {depth}")
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise CheckpointError(f"head field 'layers' must increase, got {layers}")
    return tuple(layers)


def head_module_from_dict(head: Any) -> str | None:
    """The record's ``module`` (``package.module:factory``): set for, and only for, ``module`` heads."""
    module = head.get("module") if isinstance(head, dict) else None
    kind = head.get("type") if isinstance(head, dict) else None
    if (module is None) != (kind != "module"):
        raise CheckpointError("head field 'module' goes with, and only with, head type 'module'")
    return None if module is None else check_module_path(module)


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
        batch = patch_tokens.shape[0]
        rows, cols = grid
        features = F.gelu(self.conv(token_map(patch_tokens, grid)))
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
        return upsample_to_pixels(self.proj(token_map(patch_tokens, grid)), self.patch_size)


class MultiLevelHead(nn.Module):
    """A small DPT-style decoder: each level's tokens (the outputs of the blocks in
    ``layers``, final-normed) projected by a 1x1 conv to ``hidden``, summed, fused by a
    3x3 conv, predicted by a 1x1 conv and bilinearly upsampled to the image.

    ViT levels share one token grid, so the fusion needs no resampling between levels.
    """

    def __init__(self, embed_dim: int, out_channels: int, patch_size: int, hidden: int = 128,
                 layers: Sequence[int] = (1,)) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.hidden = hidden
        self.layers = tuple(layers)
        self.proj = nn.ModuleList(nn.Conv2d(embed_dim, hidden, kernel_size=1) for _ in self.layers)
        self.fuse = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.predict = nn.Conv2d(hidden, out_channels, kernel_size=1)

    def forward(self, levels: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """One ``[B, gh * gw, D]`` token tensor per level -> map ``[B, C, gh * p, gw * p]``."""
        if len(levels) != len(self.proj):
            raise ValueError(f"the head reads {len(self.proj)} levels, got {len(levels)}")
        fused = sum(proj(token_map(tokens, grid)) for proj, tokens in zip(self.proj, levels))
        features = F.gelu(self.fuse(F.gelu(fused)))
        return upsample_to_pixels(self.predict(features), self.patch_size)


def token_map(patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``[B, gh * gw, D]`` (row-major) -> a ``[B, D, gh, gw]`` map."""
    rows, cols = grid
    batch, _, dim = patch_tokens.shape
    return patch_tokens.transpose(1, 2).reshape(batch, dim, rows, cols)


def upsample_to_pixels(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch maps ``[B, C, gh, gw]`` bilinearly to the image's pixels."""
    size = (maps.shape[-2] * patch_size, maps.shape[-1] * patch_size)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


# Head name -> class, built as ``cls(embed_dim, out_channels, patch_size, hidden)`` (and
# ``layers=`` for multilevel). ``module``: a user's factory (``models.head_module``).
HEADS: dict[str, type[nn.Module] | None] = {"dense": DenseHead, "linear": LinearHead,
                                            "multilevel": MultiLevelHead, "module": None}
HEAD_TYPES_WITH_LAYERS = ("multilevel", "module")  # the types a record's 'layers' may go with


def build_head(kind: str, embed_dim: int, out_channels: int, patch_size: int, hidden: int = 128, *,
               layers: Sequence[int] | None = None, module: str | None = None) -> nn.Module:
    """The head a checkpoint's head record describes (weights not loaded)."""
    if kind not in HEADS:
        raise CheckpointError(f"unknown head type '{kind}'; known head types: {', '.join(HEADS)}")
    if layers is not None and kind not in HEAD_TYPES_WITH_LAYERS:
        raise CheckpointError(f"a {kind} head reads the last block only; 'layers' go with "
                              f"{' or '.join(HEAD_TYPES_WITH_LAYERS)} heads")
    if kind == "module":
        if module is None:
            raise CheckpointError("a module head needs the field 'module' (package.module:factory)")
        return build_module_head(module, embed_dim, out_channels, patch_size, layers)
    if kind == "multilevel":
        if layers is None:
            raise CheckpointError("a multilevel head needs the field 'layers'")
        return MultiLevelHead(embed_dim, out_channels, patch_size, hidden, layers)
    return HEADS[kind](embed_dim, out_channels, patch_size, hidden)
