"""Fine-tune one single-task checkpoint from a shared initialisation (step 0)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mtlcompress.data.layouts import open_dataset
from mtlcompress.errors import MtlCompressError
from mtlcompress.io.image_size import SizeLike
from mtlcompress.models.backbone import resolve_backbone, with_image_size
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.weights import is_backbone_init, load_initial_backbone, read_backbone_config
from mtlcompress.tasks.registry import get_task
from mtlcompress.training.evaluate import evaluate_model
from mtlcompress.training.distributed import maybe_ddp, training_device, world
from mtlcompress.training.loop import TrainConfig, adamw, resume_state_path, run_training


def train_single_task(
    *,
    task: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    init: str | os.PathLike | None = None,
    backbone: str = "tiny",
    img_size: SizeLike | None = None,
    config: TrainConfig | None = None,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
) -> CheckpointInfo:
    """Train ``task`` on ``data`` and write a single-task checkpoint to ``out``.

    Args:
        task: a registered task name (``semseg``, ``depth``, ``normals``, ...).
        data: dataset folder with labels for ``task``.
        out: where the checkpoint is written.
        init: a backbone from ``pretrain_backbone`` (its architecture is used), or
            ``None`` to start from ``backbone``.
        backbone: a preset or timm ViT name, used without ``init``.
        img_size: train at this size instead of the backbone's (or the init file's): one
            number, or (height, width); an init's position embedding is resampled to it
            with timm's ``resample_abs_pos_embed``.
        config: optimiser settings (``TrainConfig``); default: its defaults.
        resume: continue from ``<out>.resume.safetensors`` when an interrupted run left one.
        overwrite: replace an existing ``out`` instead of refusing.
        show_progress: draw a progress bar while training.

    Returns:
        The checkpoint's info, carrying the validation metrics also stored in the file.
    """
    config = config or TrainConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise MtlCompressError(f"{out} already exists; pass --overwrite to replace it")
    spec = get_task(task)
    backbone_config = read_backbone_config(init) if init and is_backbone_init(Path(init)) else resolve_backbone(backbone)
    if img_size is not None:
        backbone_config = with_image_size(backbone_config, img_size)
    train = open_dataset(data, split="train", tasks=[task], size=backbone_config.img_size)
    val = open_dataset(data, split="val", tasks=[task], size=backbone_config.img_size)
    num_classes = train.num_classes.get(task) if spec.categorical else None
    info = CheckpointInfo(task=task, backbone=backbone_config, out_channels=spec.out_channels(num_classes),
                          num_classes=num_classes, class_names=train.class_names.get(task, []))
    torch.manual_seed(config.seed)
    model = build_model(info)
    provenance: dict[str, Any] = {"init": None}
    if init is not None:
        provenance = load_initial_backbone(model.backbone, init)
    wrapped = maybe_ddp(model, training_device(config.device))
    optimizer = adamw(wrapped.parameters(), config)
    loss_options = train.loss_options.get(task, {})  # the references' per-dataset settings

    def compute_loss(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = spec.loss(wrapped(batch["image"]), batch[task], **loss_options)
        return loss, {"loss": loss.item()}

    def evaluate(step: int) -> dict[str, float]:
        return evaluate_model(model, val, spec, num_classes, precision=config.precision)

    run_id = {"stage": "train", "task": task, "data": str(Path(data).resolve()), "init": provenance["init"],
              "backbone": backbone_config.to_dict(), "config": config.to_dict()}
    state_path = resume_state_path(out)
    result = run_training(model=wrapped, optimizer=optimizer, compute_loss=compute_loss, dataset=train,
                          config=config, state_path=state_path, run_id=run_id, description=f"train {task}",
                          evaluate=evaluate, resume=resume, show_progress=show_progress)
    final = result.evaluations[-1] if result.evaluations else evaluate(config.steps)
    info.metrics = {k: v for k, v in final.items() if k != "step"}
    model.cpu()
    info.training = {**run_id, "resumed_from": result.resumed_from, "final_loss": result.last_losses.get("loss")}
    if len(result.lr_changes) > 1:  # a resume lowered the learning rate: config.lr alone would hide it
        info.training["lr_changes"] = result.lr_changes
    if world()[0] == 0:
        save_checkpoint(model, info, out)
        state_path.unlink(missing_ok=True)
    return info
