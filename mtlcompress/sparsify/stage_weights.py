"""Stage 1: learn which backbone weights of a sub-task may differ from the base.

``W_t = W_0 + z * w`` with hard-concrete gates ``z``; a Lagrangian controller steers
the expected density to the user's target, and the end snaps to exactly that density
by ranking the gates' log-alpha. ``w`` starts at the sub-task's own ``W_t - W_0`` (the
paper starts at 0: starting from the fine-tuned checkpoint keeps its accuracy from
step 0 and makes the L0 stage a pruning problem). ``method="magnitude"`` is the
no-training baseline that keeps the largest ``|W_t - W_0|``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mtlcompress.errors import MtlCompressError

from mtlcompress.sparsify.common import (
    StageResult,
    check_output,
    evaluate_on,
    finish_stage,
    load_pair,
    stage_data,
    student_from,
    weight_delta,
    weights_fingerprint,
)
from mtlcompress.sparsify.delta_model import DeltaModel
from mtlcompress.sparsify.density_control import DEFAULT_LAMBDA_LR, LagrangianDensityController
from mtlcompress.sparsify.magnitude import magnitude_masks, project_to_density
from mtlcompress.sparsify.config import WeightsConfig
from mtlcompress.sparsify.structures import add_delta_, structured_deltas
from mtlcompress.sparsify.supervision import make_objective
from mtlcompress.training.distributed import maybe_ddp, to_device, training_device
from mtlcompress.training.loop import TrainConfig, resume_state_path, run_training

class _GatedTraining(nn.Module):
    """Everything stage 1 optimises, in one module so it saves and resumes together."""

    def __init__(self, delta_model: DeltaModel, controller: LagrangianDensityController) -> None:
        super().__init__()
        self.delta_model = delta_model
        self.controller = controller

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.delta_model(images)


def sparsify_weights(
    *,
    base: str | os.PathLike,
    task: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    density: float = WeightsConfig.density,
    method: str = WeightsConfig.method,
    supervision: str = "auto",
    config: TrainConfig | None = None,
    gate_lr: float = WeightsConfig.gate_lr,
    init_delta: str = WeightsConfig.init_delta,
    per_tensor_gates: bool = WeightsConfig.per_tensor_gates,
    structure: str = WeightsConfig.structure,
    block: str = WeightsConfig.block,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Write a checkpoint whose backbone differs from the base in ``density`` of its weights.

    Stage 1: learn which weights of ``W_t - W_0`` to keep (L0 gates, or magnitude), so
    the bundle stores a sparse delta instead of a second backbone. Records the original
    checkpoint as ``sparsity.source`` for the later stages' distillation and reports.

    Args:
        base: the base task's checkpoint; the output differs from it only in the delta.
        task: the sub-task's checkpoint (the original, or the previous stage's output).
        data: dataset folder (labels are optional with ``supervision="distill"``).
        out: where the sparsified checkpoint is written.
        density: target fraction of backbone weights that differ from the base.
        method: ``"l0"`` (learned hard-concrete gates) or ``"magnitude"`` (largest deltas).
        gate_lr: learning rate of the gates' log-alpha.
        init_delta: start the delta at the sub-task's own ``W_t - W_0`` (``"checkpoint"``) or at 0.
        per_tensor_gates: also learn one gate per tensor.
        structure: ``"unstructured"``, ``"block"`` (whole blocks by norm) or ``"lowrank"``
            (truncated SVD); the structured ones read ``density`` as bytes of the dense
            weights (``sparsify.structures``) and need ``method="magnitude"``.
        block: the block shape of ``structure="block"``, e.g. ``"8x8"``.
        supervision: ``"labels"``, ``"distill"`` (from the original checkpoint) or
            ``"auto"`` (labels when the data has them).
        config: optimiser settings; default: this stage's defaults (``sparsify.config``).
        resume: continue from ``<out>.resume.safetensors`` when an interrupted run left one.
        overwrite: replace an existing ``out`` instead of refusing.
        show_progress: draw a progress bar while training.

    Returns:
        The stage's ``StageResult``: achieved density and metrics against the original.
    """
    WeightsConfig(density=density, method=method, gate_lr=gate_lr, init_delta=init_delta,
                  per_tensor_gates=per_tensor_gates, structure=structure, block=block).validate()
    if structure != "unstructured" and method != "magnitude":
        raise MtlCompressError(f"--structure {structure} selects its delta without training; use --method magnitude")
    config = config or WeightsConfig.train_config()
    out = check_output(out, overwrite)
    base_model, base_info, task_model, task_info = load_pair(base, task)
    data_ = stage_data(data, task_info, supervision)
    device = training_device(config.device)  # for training (l0), and for every method's evaluation
    to_device(base_model, task_model, device=device)
    original = evaluate_on(task_model, data_, device)
    start_delta = weight_delta(task_model, base_model)
    run_id: dict[str, Any] = {"stage": "weights", "method": method, "base": str(Path(base).resolve()),
                              "task": str(Path(task).resolve()), "data": str(Path(data).resolve()),
                              "density": density, "supervision": data_.supervision, "init_delta": init_delta,
                              "per_tensor_gates": per_tensor_gates, "gate_lr": gate_lr, "config": config.to_dict()}
    if structure != "unstructured":  # (absent otherwise, so older runs resume as before)
        run_id.update(structure=structure, block=block)
    torch.manual_seed(config.seed)
    gate_stats: dict[str, Any] = {}
    if structure != "unstructured":
        kept, gate_stats = structured_deltas(start_delta, density, structure, block)
        result_model = student_from(base_model, task_model)
        base_weights = dict(base_model.backbone.named_parameters())
        with torch.no_grad():
            for name, parameter in result_model.backbone.named_parameters():
                add_delta_(parameter, base_weights[name], kept[name])
        result_model.eval()
    elif method == "magnitude":
        masks = magnitude_masks(start_delta, density)
        student = student_from(base_model, task_model)
        with torch.no_grad():
            for name, parameter in student.backbone.named_parameters():
                parameter.add_(masks[name] * start_delta[name])
        result_model = student.eval()
    else:
        delta_model = DeltaModel(student_from(base_model, task_model),
                                 init_delta=start_delta if init_delta == "checkpoint" else None,
                                 per_tensor_gates=per_tensor_gates)
        controller = LagrangianDensityController(density, warmup_steps=max(1, config.steps // 3))
        trainable = _GatedTraining(delta_model, controller)
        wrapped = maybe_ddp(trainable, device)
        gate_params = [p for n, p in trainable.named_parameters() if "gates" in n]
        optimizer = torch.optim.AdamW([
            {"params": list(delta_model.delta.parameters()) + list(delta_model.model.head.parameters())},
            {"params": gate_params, "lr": gate_lr, "weight_decay": 0.0},
            {"params": list(controller.parameters()), "lr": DEFAULT_LAMBDA_LR, "weight_decay": 0.0, "maximize": True,
             "constant_lr": True},
        ], lr=config.lr, weight_decay=0.0)
        objective = make_objective(data_.spec, data_.supervision, task_model)  # the teacher is on the device

        def compute_loss(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            task_loss = objective(batch, wrapped(batch["image"]))
            expected = delta_model.expected_density()
            loss = task_loss + controller.penalty(expected, step)
            return loss, {"loss": task_loss.item(), "density": expected.item(), "lambda1": controller.lambda1.item()}

        run_training(model=wrapped, optimizer=optimizer, compute_loss=compute_loss, dataset=data_.train,
                     config=config, state_path=resume_state_path(out), run_id=run_id,
                     description=f"weights {task_info.task}", resume=resume, show_progress=show_progress)
        with torch.no_grad():
            delta_model.eval()
            # How close the gates themselves came, before snapping to the exact target.
            gate_stats = {"expected_density": float(delta_model.expected_density()),
                          "gate_density": sum(int(delta_model.gates[k].mask().sum()) for k in delta_model.gates)
                          / delta_model.num_weights}
        result_model = delta_model.export(project_to_density(delta_model.gate_scores(), density))
    sparsity = {"base": {"task": base_info.task, "path": run_id["base"],
                         "fingerprint": weights_fingerprint(base_model.backbone.state_dict())},
                "source": str(Path(task).resolve()), "original_metrics": original, "method": method,
                "target_density": density, "supervision": data_.supervision, **gate_stats}
    return finish_stage(stage="weights", model=result_model, base_model=base_model, info=task_info, data=data_,
                        out=out, run_id=run_id, sparsity=sparsity,
                        extra={"method": method, "target_density": density, **gate_stats}, device=device)
