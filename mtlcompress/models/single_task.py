"""A single-task dense model: timm ViT backbone + task head."""

from __future__ import annotations

import torch
import torch.nn as nn

from mtlcompress.models.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, build_backbone
from mtlcompress.models.heads import build_head

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SingleTaskModel", "backbone_patch_tokens", "normalize_images"]


def normalize_images(images: torch.Tensor, config: BackboneConfig) -> torch.Tensor:
    """Images in [0, 1] -> the input ``config``'s backbone was trained on (its own mean
    and std). The one place normalisation is computed: models, trainers and engines all
    call it, so callers never have to remember it."""
    mean = torch.tensor(config.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def backbone_patch_tokens(backbone: nn.Module, config: BackboneConfig, images: torch.Tensor) -> torch.Tensor:
    """Final-norm patch tokens [B, N, D] (prefix tokens dropped) for images in [0, 1]."""
    tokens = backbone.forward_features(normalize_images(images, config))
    return tokens[:, config.num_prefix_tokens:]


class SingleTaskModel(nn.Module):
    """One task's model. ``forward(images in [0,1]) -> raw map [B, C, H, W]``."""

    def __init__(self, backbone_config: BackboneConfig, task: str, out_channels: int, head_hidden: int = 128,
                 *, initialise: bool = True, head_type: str = "dense") -> None:
        super().__init__()
        self.backbone_config = backbone_config
        self.task = task
        self.backbone = build_backbone(backbone_config, initialise=initialise)
        self.head = build_head(head_type, backbone_config.embed_dim, out_channels, backbone_config.patch_size,
                               head_hidden)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return backbone_patch_tokens(self.backbone, self.backbone_config, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch_tokens(images), self.backbone_config.grid_size)
