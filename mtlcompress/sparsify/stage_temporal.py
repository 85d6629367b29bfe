"""Stage 4 (video): make activations change sparsely from one frame to the next.

For the base task every weight is fine-tuned with ``sum_l lambda_l * penalty(x^f - x^{f-k})``
(random offsets ``k``) added to its task loss; run this *before* sparsifying sub-tasks
against it, since it changes the base weights. For a sub-task the kept deltas are
fine-tuned with the temporal penalty and the task-domain penalty together. Temporal
thresholds are then calibrated by streaming held-out clips from a keyframe.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.models.taps import record_linear_inputs, shared_linear_names
from mtlcompress.sparsify.activation_penalty import activation_delta_penalty, layer_coefficients
from mtlcompress.sparsify.calibrate import calibrate_temporal_thresholds
from mtlcompress.sparsify.common import StageResult, check_output, finish_stage, load_pair, load_source, stage_data
from mtlcompress.sparsify.delta_model import masked_delta_model
from mtlcompress.sparsify.config import TemporalConfig
from mtlcompress.sparsify.supervision import make_objective
from mtlcompress.sparsify.temporal_data import FramePairs, split_clips
from mtlcompress.training.distributed import maybe_ddp, to_device, training_device
from mtlcompress.training.loop import TrainConfig, adamw, resume_state_path, run_training


def sparsify_temporal(
    *,
    task: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    base: str | os.PathLike | None = None,
    granularity: str = TemporalConfig.granularity,
    strength: float = TemporalConfig.strength,
    tolerance: float = TemporalConfig.tolerance,
    token_density: float | None = TemporalConfig.token_density,
    max_offset: int = TemporalConfig.max_offset,
    supervision: str = "auto",
    config: TrainConfig | None = None,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Temporal fine-tuning + calibration: compute only what changed since the previous frame.

    Stage 4 (video): like stage 3, against the previous frame instead of the base
    task. Needs at least two clips in ``data``.

    Args:
        task: the checkpoint to make temporally sparse (a sub-task's previous stage
            output, or the base task's checkpoint).
        data: dataset folder with video clips.
        out: where the checkpoint is written.
        base: the base task's checkpoint; ``None`` treats ``task`` as the base task.
        granularity: ``"token"`` or ``"element"``.
        strength: temporal-delta penalty strength.
        tolerance: allowed relative drop of the task metric from thresholding.
        token_density: instead of a tolerance, calibrate to this measured delta density.
        max_offset: largest frame offset sampled for training pairs.
        supervision: ``"labels"``, ``"distill"`` (from the original checkpoint) or
            ``"auto"`` (labels when the data has them).
        config: optimiser settings; default: this stage's defaults (``sparsify.config``).
        resume: continue from ``<out>.resume.safetensors`` when an interrupted run left one.
        overwrite: replace an existing ``out`` instead of refusing.
        show_progress: draw a progress bar while training.

    Returns:
        The stage's ``StageResult``: achieved density and metrics against the original.
    """
    TemporalConfig(granularity=granularity, strength=strength, tolerance=tolerance, token_density=token_density,
                   max_offset=max_offset).validate()
    config = config or TemporalConfig.train_config()
    out = check_output(out, overwrite)
    if base is not None:
        base_model, _, task_model, info = load_pair(base, task)
    else:
        task_model, info = load_checkpoint(task)
        base_model = task_model
    # Checked before training: a mismatch found afterwards would waste the whole run.
    previous_activation = info.sparsity.get("activation", {})
    if previous_activation and previous_activation.get("granularity", granularity) != granularity:
        raise MtlCompressError(f"{task} uses {previous_activation['granularity']} granularity; "
                               "the temporal stage must use the same")
    data_ = stage_data(data, info, supervision)
    label_tasks = [info.task] if info.task in data_.train.available_tasks else []
    train_clips, held_out = split_clips(data, label_tasks, info.backbone.img_size)
    if not label_tasks and token_density is None:
        raise MtlCompressError(f"calibrating to a tolerance needs '{info.task}' labels; pass --token-density")
    layers = shared_linear_names(info.backbone.depth)
    coefficients = layer_coefficients(layers, info.backbone.depth, strength)
    teacher = load_source(info.sparsity) or copy.deepcopy(task_model)
    objective = make_objective(data_.spec, data_.supervision, teacher)

    if base is None:
        student = copy.deepcopy(task_model).train()
        forward, backbone = student, student.backbone
        params = [{"params": list(student.parameters())}]
    else:
        base_model.eval()
        for parameter in base_model.parameters():
            parameter.requires_grad_(False)
        delta_model = masked_delta_model(base_model, task_model)
        forward, backbone = delta_model, delta_model.model.backbone
        params = [{"params": list(delta_model.delta.parameters()), "weight_decay": 0.0},
                  {"params": list(delta_model.model.head.parameters())}]
    device = training_device(config.device)
    wrapped = maybe_ddp(forward, device)
    to_device(teacher, base_model, device=device)
    optimizer = adamw(params, config)

    def compute_loss(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        with record_linear_inputs(backbone, layers) as previous:
            wrapped(batch["previous"])
        previous = {k: v.detach() for k, v in previous.items()}
        with record_linear_inputs(backbone, layers) as current:
            raw = wrapped(batch["image"])
        task_loss = objective(batch, raw)
        penalty = activation_delta_penalty(current, previous, coefficients, granularity)
        logs = {"loss": task_loss.item(), "temporal": penalty.item()}
        if base is not None:
            with torch.no_grad(), record_linear_inputs(base_model.backbone, layers, detach=True) as base_inputs:
                base_model(batch["image"])
            cross = activation_delta_penalty(current, base_inputs, coefficients, granularity)
            penalty = penalty + cross
            logs["task_delta"] = cross.item()
        return task_loss + penalty, logs

    run_id = {"stage": "temporal", "base": str(Path(base).resolve()) if base else None,
              "task": str(Path(task).resolve()), "data": str(Path(data).resolve()), "granularity": granularity,
              "strength": strength, "max_offset": max_offset, "supervision": data_.supervision,
              "config": config.to_dict()}
    run_training(model=wrapped, optimizer=optimizer, compute_loss=compute_loss,
                 dataset=FramePairs(train_clips, max_offset), config=config, state_path=resume_state_path(out),
                 run_id=run_id, description=f"temporal {info.task}", resume=resume, show_progress=show_progress)
    model = student.eval() if base is None else delta_model.export()  # calibrated (fp32) on the training device
    calibration = calibrate_temporal_thresholds(model, held_out, data_.spec, data_.num_classes, layers, granularity,
                                                tolerance=tolerance, target_density=token_density, device=device)
    activation = {"granularity": granularity, "task_thresholds": previous_activation.get("task_thresholds", {}),
                  "temporal_thresholds": calibration.thresholds}
    summary = {"temporal_density": calibration.density, "temporal_keep": calibration.keep,
               "temporal_metrics": calibration.metrics, "temporal_reference": calibration.reference_metrics}
    # For the base task the fine-tuned model *is* the new base: its delta density is 0.
    return finish_stage(stage="temporal", model=model, base_model=model if base is None else base_model, info=info, data=data_, out=out,
                        run_id=run_id, sparsity={"activation": activation, **summary},
                        extra={"granularity": granularity, **summary}, device=device)
