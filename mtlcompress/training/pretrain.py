"""Shared pretraining: one backbone trained on all tasks at once, saved as the common
initialisation that every single-task model is then fine-tuned from.

This stands in for the ImageNet-pretrained ViT real users start from; the method needs
every task model to come from one initialisation so that their weights stay close.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtlcompress.data.layouts import open_dataset
from mtlcompress.io.image_size import SizeLike
from mtlcompress.models.backbone import BackboneConfig, resolve_backbone, with_image_size
from mtlcompress.models.multi_head import MultiHeadModel
from mtlcompress.models.weights import save_backbone_init
from mtlcompress.tasks.registry import get_task
from mtlcompress.training.distributed import maybe_ddp, training_device, world
from mtlcompress.training.loop import TrainConfig, adamw, resume_state_path, run_training


def pretrain_backbone(
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    backbone: str | BackboneConfig = "tiny",
    img_size: SizeLike | None = None,
    tasks: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    resume: bool = True,
    show_progress: bool = True,
) -> BackboneConfig:
    """Train a multi-head model on ``tasks`` (default: all labelled) and save its backbone.

    The single-task models all start from this backbone, so their weights stay close
    and the deltas against the base task stay sparse.

    Args:
        data: dataset folder.
        out: where the backbone file (``mtlcompress.backbone`` format) is written.
        backbone: a preset name (``micro``, ``tiny``, ...) or timm ViT name, or a
            ``BackboneConfig``.
        img_size: train at this size instead of the backbone's: one number, or
            (height, width), each a multiple of the patch size.
        tasks: the tasks whose heads train the backbone; default: every labelled task.
        config: optimiser settings (``TrainConfig``); default: its defaults.
        resume: continue from ``<out>.resume.safetensors`` when an interrupted run left one.
        show_progress: draw a progress bar while training.

    Returns:
        The backbone's architecture.
    """
    config = config or TrainConfig()
    backbone_config = backbone if isinstance(backbone, BackboneConfig) else resolve_backbone(backbone)
    if img_size is not None:
        backbone_config = with_image_size(backbone_config, img_size)
    train = open_dataset(data, split="train", tasks=list(tasks) if tasks else None, size=backbone_config.img_size)
    specs = {name: get_task(name) for name in train.tasks}
    channels = {name: spec.out_channels(train.num_classes.get(name)) for name, spec in specs.items()}
    torch.manual_seed(config.seed)
    model = MultiHeadModel(backbone_config, channels)
    wrapped = maybe_ddp(model, training_device(config.device))
    optimizer = adamw(wrapped.parameters(), config)

    def compute_loss(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = wrapped(batch["image"])
        parts = {name: spec.loss(outputs[name], batch[name], **train.loss_options.get(name, {}))
                 for name, spec in specs.items()}
        # Normalised by the summed weights so the learning rate means the same for any task set.
        total = sum(specs[n].loss_weight * v for n, v in parts.items()) / sum(s.loss_weight for s in specs.values())
        return total, {"loss": total.item()}

    run_id = {"stage": "pretrain", "tasks": sorted(specs), "data": str(Path(data).resolve()),
              "backbone": backbone_config.to_dict(), "config": config.to_dict()}
    state_path = resume_state_path(out)
    result = run_training(model=wrapped, optimizer=optimizer, compute_loss=compute_loss, dataset=train,
                          config=config, state_path=state_path, run_id=run_id, description="shared pretraining",
                          resume=resume, show_progress=show_progress)
    model.cpu()
    if world()[0] == 0:
        training = {**run_id, "final_loss": result.last_losses.get("loss")}
        if len(result.lr_changes) > 1:  # a resume lowered the learning rate: config.lr alone would hide it
            training["lr_changes"] = result.lr_changes
        save_backbone_init(model.backbone, backbone_config, out, training=training)
        state_path.unlink(missing_ok=True)
    return backbone_config
