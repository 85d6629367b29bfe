"""One backbone with a head per task: only used for the shared pretraining run that
gives every single-task model the same initialisation."""

from __future__ import annotations

import torch
import torch.nn as nn

from mtlcompress.models.backbone import BackboneConfig, build_backbone
from mtlcompress.models.heads import DenseHead
from mtlcompress.models.single_task import backbone_patch_tokens


class MultiHeadModel(nn.Module):
    def __init__(self, backbone_config: BackboneConfig, out_channels: dict[str, int], head_hidden: int = 128) -> None:
        super().__init__()
        self.backbone_config = backbone_config
        self.backbone = build_backbone(backbone_config)
        self.heads = nn.ModuleDict({
            task: DenseHead(backbone_config.embed_dim, channels, backbone_config.patch_size, head_hidden)
            for task, channels in out_channels.items()
        })

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = backbone_patch_tokens(self.backbone, self.backbone_config, images)
        return {task: head(tokens, self.backbone_config.grid_size) for task, head in self.heads.items()}
