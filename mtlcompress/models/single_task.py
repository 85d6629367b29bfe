"""A single-task dense model: timm ViT backbone + task head."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from mtlcompress.models.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, build_backbone
from mtlcompress.models.heads import build_head
from mtlcompress.models.taps import record_block_outputs

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SingleTaskModel", "backbone_patch_tokens", "normalize_images"]


def normalize_images(images: torch.Tensor, config: BackboneConfig) -> torch.Tensor:
    """Images in [0, 1] -> the input ``config``'s backbone was trained on (its own mean
    and std). The one place normalisation is computed: models, trainers and engines all
    call it, so callers never have to remember it."""
    if torch.compiler.is_compiling():  # traced: constants of the compiled graph
        mean, std = _normalisation.__wrapped__(tuple(config.mean), tuple(config.std), images.device, images.dtype)
    else:
        mean, std = _normalisation(tuple(config.mean), tuple(config.std), images.device, images.dtype)
    return (images - mean) / std


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``[1, 3, 1, 1]`` tensors on ``device``, made once: a tensor
    made from host values per call is a host-to-device copy per call on a GPU, which a
    CUDA graph cannot capture (the captured call reads these from device memory)."""
    with torch.inference_mode(False):  # plain tensors, usable under autograd too
        return (torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1),
                torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1))


def backbone_patch_tokens(backbone: nn.Module, config: BackboneConfig, images: torch.Tensor) -> torch.Tensor:
    """Final-norm patch tokens [B, N, D] (prefix tokens dropped) for images in [0, 1]."""
    tokens = backbone.forward_features(normalize_images(images, config))
    return tokens[:, config.num_prefix_tokens:]


class SingleTaskModel(nn.Module):
    """One task's model. ``forward(images in [0,1]) -> raw map [B, C, H, W]``.

    A head with ``head_layers`` (1-based block indices) reads those blocks' outputs,
    each through the backbone's final norm; other heads read the last block's.
    """

    def __init__(self, backbone_config: BackboneConfig, task: str, out_channels: int, head_hidden: int = 128,
                 *, initialise: bool = True, head_type: str = "dense", head_layers: Sequence[int] | None = None,
                 head_module: str | None = None) -> None:
        super().__init__()
        self.backbone_config = backbone_config
        self.task = task
        self.head_layers = None if head_layers is None else tuple(head_layers)
        self.backbone = build_backbone(backbone_config, initialise=initialise)
        self.head = build_head(head_type, backbone_config.embed_dim, out_channels, backbone_config.patch_size,
                               head_hidden, layers=self.head_layers, module=head_module)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return backbone_patch_tokens(self.backbone, self.backbone_config, images)

    @property
    def feature_blocks(self) -> tuple[int, ...]:
        """The blocks (1-based) whose outputs the head reads besides the last one."""
        return self.head_layers or ()

    def head_output(self, block_outputs: Mapping[int, torch.Tensor], grid: int) -> torch.Tensor:
        """The head on ``block_outputs`` (1-based block index -> that block's output
        ``[B, N, D]``, prefix tokens included, before the final norm): the last block's for
        a one-level head, each of ``head_layers`` for a multi-level one. Engines that run
        the blocks themselves call this, so every engine feeds a head alike."""
        prefix, norm = self.backbone_config.num_prefix_tokens, self.backbone.norm
        if self.head_layers is None:
            return self.head(norm(block_outputs[self.backbone_config.depth])[:, prefix:], grid)
        return self.head([norm(block_outputs[i])[:, prefix:] for i in self.head_layers], grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.head_layers is None:
            return self.head(self.patch_tokens(images), self.backbone_config.grid_size)
        with record_block_outputs(self.backbone, self.head_layers) as outputs:
            self.backbone.forward_features(normalize_images(images, self.backbone_config))
        return self.head_output(outputs, self.backbone_config.grid_size)
