"""A ViT's patch embedding kept up to date across video frames: only the patches whose
pixels changed since the last frame are embedded again.

timm's ``PatchEmbed`` is a convolution whose kernel equals its stride, so each patch's
token depends on that patch's pixels alone and equals one linear map of them; a patch
whose pixels are unchanged keeps last frame's token exactly. The changed patches go
through that linear map (the convolution weight flattened), the rest of the embedding
(class and register tokens, position embedding, pre-norm) runs as timm runs it, on
every token: it is cheap and row-wise.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import Tensor

__all__ = ["PatchEmbedState", "embed_tokens", "supports_incremental_embed"]


class PatchEmbedState:
    """One backbone's last frame: its normalised pixels and patch tokens ``[B, L, C]``."""

    def __init__(self, backbone: nn.Module, pixels: Tensor) -> None:
        self.backbone = backbone
        self.pixels = pixels.clone()
        self.patches = backbone.patch_embed(pixels)

    def update(self, pixels: Tensor) -> Tensor:
        """The tokens entering block 0 for the new frame ``pixels`` (same shape as the last)."""
        embed = self.backbone.patch_embed
        batch, channels, height, width = pixels.shape
        size = embed.patch_size[0]
        rows, cols = height // size, width // size

        def by_patch(image: Tensor) -> Tensor:  # [B, rows, cols, channels, size, size] view
            return image.view(batch, channels, rows, size, cols, size).permute(0, 2, 4, 1, 3, 5)

        changed = by_patch(pixels != self.pixels).flatten(3).any(dim=-1)  # [B, rows, cols]
        where = changed.nonzero().unbind(1)
        if where[0].numel():
            weight = embed.proj.weight
            new = F.linear(by_patch(pixels)[where].reshape(-1, weight[0].numel()), weight.flatten(1),
                           embed.proj.bias)
            self.patches[where[0], where[1] * cols + where[2]] = embed.norm(new)
            self.pixels.copy_(pixels)
        return self.tokens()

    def tokens(self) -> Tensor:
        """The tokens entering block 0 for the last frame."""
        return _finish(self.backbone, self.patches)


def supports_incremental_embed(backbone: nn.Module) -> bool:
    """A plain timm ``PatchEmbed``: a square patch convolution (kernel = stride, no
    padding), tokens flattened to ``[B, L, C]``, a row-wise norm or none."""
    embed = getattr(backbone, "patch_embed", None)
    if type(embed) is not PatchEmbed:
        return False
    conv = embed.proj
    return (isinstance(conv, nn.Conv2d) and embed.flatten and not embed.dynamic_img_pad
            and conv.kernel_size == conv.stride == embed.patch_size and embed.patch_size[0] == embed.patch_size[1]
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and isinstance(embed.norm, (nn.Identity, nn.LayerNorm)))


def embed_tokens(backbone: nn.Module, pixels: Tensor) -> Tensor:
    """timm's embedding of normalised ``pixels``: the tokens entering block 0."""
    return _finish(backbone, backbone.patch_embed(pixels))


def _finish(backbone: nn.Module, patches: Tensor) -> Tensor:
    return backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(patches)))

