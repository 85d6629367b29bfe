"""A task's final norm and dense head kept up to date across video frames: only the
output pixels whose inputs changed since the last frame are computed again.

The head (:class:`~mtlcompress.models.heads.DenseHead`) is local: the final norm is
row-wise, its 3x3 convolution reads a token's 3x3 neighbourhood, and the 1x1
convolution and pixel shuffle turn each grid position into its own ``patch x patch``
block of output pixels. So when some tokens change, only the grid positions within one
step of them change: each is recomputed from its neighbourhood (the convolution as one
linear map of the gathered 3x3 window) and written into last frame's output. When most
positions changed, the whole head runs instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mtlcompress.models.heads import DenseHead

__all__ = ["HeadState", "supports_incremental_head"]

# Above this share of grid positions to recompute, the whole head runs instead.
_FULL_ABOVE = 0.5


class HeadState:
    """One task's last frame: its block output, normed patch tokens on a zero-padded
    grid, and the head's output.

    Args:
        norm: the backbone's final norm (row-wise).
        head: the task's dense head.
        prefix: class and register tokens before the patch tokens (the head skips them).
        grid: patches down and across, ``(rows, cols)``.
        x: the keyframe's block output ``[B, N, C]``.
    """

    def __init__(self, norm: nn.Module, head: DenseHead, prefix: int, grid: tuple[int, int], x: Tensor) -> None:
        self.norm, self.head, self.prefix, self.grid = norm, head, prefix, grid
        self.x = x.clone()
        tokens = norm(x)[:, prefix:]
        self.output = head(tokens, grid)
        batch, _, channels = tokens.shape
        self._padded = tokens.new_zeros(batch, grid[0] + 2, grid[1] + 2, channels)
        self._padded[:, 1:-1, 1:-1] = tokens.view(batch, *grid, channels)
        conv = head.conv
        # The 3x3 convolution as a linear map of a window gathered as [3, 3, C].
        self._conv_weight = conv.weight.permute(0, 2, 3, 1).flatten(1)
        offsets = torch.arange(3, device=x.device)
        self._window = (offsets.view(3, 1).expand(3, 3).flatten(), offsets.view(1, 3).expand(3, 3).flatten())

    def update(self, x: Tensor) -> Tensor:
        """The head's output for the new block output ``x`` (updated in place; clone it
        to keep it past the next frame)."""
        batch, grid, head = x.shape[0], self.grid, self.head
        changed = (x[:, self.prefix:] != self.x[:, self.prefix:]).any(dim=-1).view(batch, *grid)
        # Positions whose 3x3 window holds a changed token.
        near = F.max_pool2d(changed.unsqueeze(1).float(), 3, stride=1, padding=1).squeeze(1).bool()
        b, row, col = near.nonzero().unbind(1)
        if not b.numel():
            return self.output
        self.x.copy_(x)
        if b.numel() > _FULL_ABOVE * near.numel():  # gathering windows costs more than the convolution
            tokens = self.norm(x)[:, self.prefix:]
            self._padded[:, 1:-1, 1:-1] = tokens.view(batch, *grid, -1)
            self.output = head(tokens, grid)
            return self.output
        where = changed.nonzero().unbind(1)
        tokens = x[:, self.prefix:].reshape(batch, *grid, -1)[where]
        self._padded[where[0], where[1] + 1, where[2] + 1] = self.norm(tokens)
        windows = self._padded[b.unsqueeze(1), row.unsqueeze(1) + self._window[0], col.unsqueeze(1) + self._window[1]]
        hidden = F.gelu(F.linear(windows.flatten(1), self._conv_weight, head.conv.bias))
        pixels = F.linear(hidden, head.proj.weight.flatten(1), head.proj.bias)
        size = head.patch_size
        blocks = self.output.view(batch, head.out_channels, grid[0], size, grid[1], size).permute(0, 2, 4, 1, 3, 5)
        blocks[b, row, col] = pixels.view(-1, head.out_channels, size, size)
        return self.output


def supports_incremental_head(norm: nn.Module, head: nn.Module) -> bool:
    """A row-wise final ``norm`` (LayerNorm or none) and our ``DenseHead`` with its plain
    3x3 (padding 1) and 1x1 convolutions."""
    if type(head) is not DenseHead or not isinstance(norm, (nn.LayerNorm, nn.Identity)):
        return False
    conv, proj = head.conv, head.proj
    return (conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and proj.kernel_size == (1, 1)
            and proj.stride == (1, 1) and proj.groups == 1)
