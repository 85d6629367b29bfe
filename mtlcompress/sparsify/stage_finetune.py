"""Stage 2: freeze the support of the delta and fine-tune only the kept values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mtlcompress.sparsify.common import StageResult, check_output, finish_stage, load_pair, load_source, stage_data
from mtlcompress.sparsify.delta_model import masked_delta_model
from mtlcompress.sparsify.config import FinetuneConfig
from mtlcompress.sparsify.structures import keep_ranks_
from mtlcompress.sparsify.supervision import make_objective
from mtlcompress.training.distributed import maybe_ddp, to_device, training_device
from mtlcompress.training.loop import TrainConfig, adamw, resume_state_path, run_training


def finetune_deltas(
    *,
    base: str | os.PathLike,
    task: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    supervision: str = "auto",
    config: TrainConfig | None = None,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Fine-tune the non-zero deltas (and the head) of a stage-1 checkpoint.

    Stage 2: the support of the delta is fixed; training only its values recovers the
    accuracy that pruning the rest lost.

    Args:
        base: the base task's checkpoint; the output differs from it only in the delta.
        task: the sub-task's checkpoint (the original, or the previous stage's output).
        data: dataset folder (labels are optional with ``supervision="distill"``).
        out: where the sparsified checkpoint is written.
        supervision: ``"labels"``, ``"distill"`` (from the original checkpoint) or
            ``"auto"`` (labels when the data has them).
        config: optimiser settings; default: this stage's defaults (``sparsify.config``).
        resume: continue from ``<out>.resume.safetensors`` when an interrupted run left one.
        overwrite: replace an existing ``out`` instead of refusing.
        show_progress: draw a progress bar while training.

    Returns:
        The stage's ``StageResult``: achieved density and metrics against the original.
    """
    config = config or FinetuneConfig.train_config()
    out = check_output(out, overwrite)
    base_model, _, task_model, task_info = load_pair(base, task)
    data_ = stage_data(data, task_info, supervision)
    delta_model = masked_delta_model(base_model, task_model)
    device = training_device(config.device)
    wrapped = maybe_ddp(delta_model, device)
    optimizer = adamw([{"params": list(delta_model.delta.parameters())},
                       {"params": list(delta_model.model.head.parameters())}], config)
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0
    teacher = load_source(task_info.sparsity) or task_model
    objective = make_objective(data_.spec, data_.supervision, teacher)
    to_device(teacher, base_model, device=device)

    def compute_loss(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = objective(batch, wrapped(batch["image"]))
        return loss, {"loss": loss.item()}

    run_id = {"stage": "finetune", "base": str(Path(base).resolve()), "task": str(Path(task).resolve()),
              "data": str(Path(data).resolve()), "supervision": data_.supervision, "config": config.to_dict()}
    run_training(model=wrapped, optimizer=optimizer, compute_loss=compute_loss, dataset=data_.train, config=config,
                 state_path=resume_state_path(out), run_id=run_id, description=f"finetune {task_info.task}",
                 resume=resume, show_progress=show_progress)
    model = delta_model.export()  # on the device, where it is evaluated too
    if task_info.sparsity.get("structure") == "lowrank":  # the support froze entries, not the rank
        keep_ranks_(model, base_model, task_info.sparsity.get("ranks", {}))
    return finish_stage(stage="finetune", model=model, base_model=base_model, info=task_info,
                        data=data_, out=out, run_id=run_id, sparsity={"supervision": data_.supervision},
                        device=device)
