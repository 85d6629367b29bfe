"""A single-task dense model: timm ViT backbone + dense head."""

from __future__ import annotations

import torch
import torch.nn as nn

from mtlcompress.models.backbone import BackboneConfig, build_backbone
from mtlcompress.models.heads import DenseHead

# Inputs are images in [0, 1]; the model owns its normalisation so callers never
# have to remember it (ImageNet statistics, as timm ViTs expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def backbone_patch_tokens(backbone: nn.Module, config: BackboneConfig, images: torch.Tensor) -> torch.Tensor:
    """Final-norm patch tokens [B, N, D] (prefix tokens dropped) for images in [0, 1]."""
    tokens = backbone.forward_features(normalize_images(images))
    return tokens[:, config.num_prefix_tokens:]


class SingleTaskModel(nn.Module):
    """One task's model. ``forward(images in [0,1]) -> raw map [B, C, H, W]``."""

    def __init__(self, backbone_config: BackboneConfig, task: str, out_channels: int, head_hidden: int = 128,
                 *, initialise: bool = True) -> None:
        super().__init__()
        self.backbone_config = backbone_config
        self.task = task
        self.backbone = build_backbone(backbone_config, initialise=initialise)
        self.head = DenseHead(backbone_config.embed_dim, out_channels, backbone_config.patch_size, head_hidden)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return backbone_patch_tokens(self.backbone, self.backbone_config, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch_tokens(images), self.backbone_config.grid_size)
