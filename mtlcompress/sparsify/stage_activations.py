"""Stage 3: make the sub-task's activations differ sparsely from the base task's.

Fine-tune the kept deltas with ``sum_l lambda_l * penalty(x_t^l - x_0^l)`` added to the
task loss (``x`` = inputs of every shared linear layer; ``x_0`` from the frozen base
model on the same images), then calibrate per-layer thresholds. The penalty itself is
in ``activation_penalty.py``; the options and their defaults in ``config.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mtlcompress.errors import MtlCompressError
from mtlcompress.models.taps import record_linear_inputs, shared_linear_names
from mtlcompress.sparsify.activation_penalty import activation_delta_penalty, layer_coefficients
from mtlcompress.sparsify.calibrate import calibrate_task_thresholds, evaluate_thresholded
from mtlcompress.sparsify.common import StageResult, check_output, finish_stage, load_pair, load_source, stage_data
from mtlcompress.sparsify.delta_model import masked_delta_model
from mtlcompress.sparsify.config import ActivationsConfig
from mtlcompress.sparsify.supervision import make_objective
from mtlcompress.training.distributed import maybe_ddp, to_device, training_device
from mtlcompress.training.loop import TrainConfig, adamw, resume_state_path, run_training


def sparsify_activations(
    *,
    base: str | os.PathLike,
    task: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    granularity: str = ActivationsConfig.granularity,
    strength: float = ActivationsConfig.strength,
    tolerance: float = ActivationsConfig.tolerance,
    token_density: float | None = ActivationsConfig.token_density,
    calibration_images: int = ActivationsConfig.calibration_images,
    supervision: str = "auto",
    config: TrainConfig | None = None,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Fine-tune with the activation-delta penalty, then calibrate thresholds.

    Stage 3: makes the sub-task's activations close to the base task's on the same
    image, so the runtime computes only the (token or element) deltas above a per-layer
    threshold.

    Args:
        base: the base task's checkpoint; the output differs from it only in the delta.
        task: the sub-task's checkpoint (the original, or the previous stage's output).
        data: dataset folder (labels are optional with ``supervision="distill"``).
        out: where the sparsified checkpoint is written.
        granularity: ``"token"`` (whole tokens: real smaller matmuls) or ``"element"``.
        strength: activation-delta penalty strength (deeper layers x2).
        tolerance: allowed relative drop of the task metric from thresholding, measured
            on ``calibration_images`` training images.
        token_density: instead of a tolerance, calibrate to this measured delta density.
        calibration_images: training images the thresholds are calibrated on.
        supervision: ``"labels"``, ``"distill"`` (from the original checkpoint) or
            ``"auto"`` (labels when the data has them).
        config: optimiser settings; default: this stage's defaults (``sparsify.config``).
        resume: continue from ``<out>.resume.safetensors`` when an interrupted run left one.
        overwrite: replace an existing ``out`` instead of refusing.
        show_progress: draw a progress bar while training.

    Returns:
        The stage's ``StageResult``: achieved density and metrics against the original.
    """
    ActivationsConfig(granularity=granularity, strength=strength, tolerance=tolerance, token_density=token_density,
                      calibration_images=calibration_images).validate()
    config = config or ActivationsConfig.train_config()
    out = check_output(out, overwrite)
    base_model, _, task_model, task_info = load_pair(base, task)
    data_ = stage_data(data, task_info, supervision)
    if data_.val is None and token_density is None:
        raise MtlCompressError(f"calibrating to a tolerance needs '{task_info.task}' labels; "
                               "pass --token-density for label-free data")
    layers = shared_linear_names(task_info.backbone.depth)
    coefficients = layer_coefficients(layers, task_info.backbone.depth, strength)
    delta_model = masked_delta_model(base_model, task_model)
    device = training_device(config.device)
    wrapped = maybe_ddp(delta_model, device)
    base_model.eval()
    for parameter in base_model.parameters():
        parameter.requires_grad_(False)
    optimizer = adamw([{"params": list(delta_model.delta.parameters()), "weight_decay": 0.0},
                       {"params": list(delta_model.model.head.parameters())}], config)
    original = load_source(task_info.sparsity)
    teacher = original or task_model
    objective = make_objective(data_.spec, data_.supervision, teacher)
    to_device(base_model, teacher, device=device)

    def compute_loss(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad(), record_linear_inputs(base_model.backbone, layers, detach=True) as base_inputs:
            base_model(batch["image"])
        with record_linear_inputs(delta_model.model.backbone, layers) as task_inputs:
            raw = wrapped(batch["image"])
        task_loss = objective(batch, raw)
        penalty = activation_delta_penalty(task_inputs, base_inputs, coefficients, granularity)
        return task_loss + penalty, {"loss": task_loss.item(), "penalty": penalty.item()}

    run_id = {"stage": "activations", "base": str(Path(base).resolve()), "task": str(Path(task).resolve()),
              "data": str(Path(data).resolve()), "granularity": granularity, "strength": strength,
              "supervision": data_.supervision, "config": config.to_dict()}
    run_training(model=wrapped, optimizer=optimizer, compute_loss=compute_loss, dataset=data_.train, config=config,
                 state_path=resume_state_path(out), run_id=run_id, description=f"activations {task_info.task}",
                 resume=resume, show_progress=show_progress)
    model = delta_model.export()  # thresholds are calibrated (in fp32) on the training device
    calibration = calibrate_task_thresholds(
        model, base_model, data_.train, data_.spec, data_.num_classes, layers, granularity,
        tolerance=tolerance, target_density=token_density, images=calibration_images, reference_model=original,
        device=device)
    activation = {"granularity": granularity, "task_thresholds": calibration.thresholds,
                  "temporal_thresholds": task_info.sparsity.get("activation", {}).get("temporal_thresholds", {})}
    if data_.val is not None:
        held_out, held_out_density = evaluate_thresholded(
            model, base_model, DataLoader(data_.val, batch_size=32, pin_memory=device.type == "cuda"), data_.spec,
            data_.num_classes, calibration.thresholds, granularity, device)
        calibration_extra = {"thresholded_metrics": held_out,
                             "held_out_activation_density": sum(held_out_density.values()) / len(held_out_density)}
    else:
        calibration_extra = {}
    summary = {**calibration_extra, "activation_density": calibration.density, "keep": calibration.keep, "tolerance": tolerance,
               "calibration_metrics": calibration.metrics, "calibration_reference": calibration.reference_metrics}
    result = finish_stage(stage="activations", model=model, base_model=base_model, info=task_info, data=data_,
                          out=out, run_id=run_id, sparsity={"activation": activation, **summary},
                          extra={"granularity": granularity, **summary}, device=device)
    return result
