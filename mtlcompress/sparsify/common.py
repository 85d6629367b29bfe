"""Plumbing shared by the sparsify stages: loading a base/sub-task pair, building the
student, datasets, evaluation against the original, and writing the stage's output."""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtlcompress.models.backbone import backbone_signature
from mtlcompress.data.base import DenseDataset
from mtlcompress.data.layouts import open_dataset
from mtlcompress.errors import CheckpointError, MtlCompressError
from mtlcompress.io.outputs import SAFETENSORS_SUFFIXES
from mtlcompress.io.outputs import check_output as check_writable_output
from mtlcompress.models.checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint_info, save_checkpoint
from mtlcompress.models.single_task import SingleTaskModel
from mtlcompress.sparsify.supervision import resolve_supervision
from mtlcompress.tasks.registry import TaskSpec, get_task
from mtlcompress.training.distributed import to_device, wait_for_all_ranks
from mtlcompress.training.evaluate import evaluate_model
from mtlcompress.training.loop import resume_state_path, world


@dataclass
class StageResult:
    """What a stage produced, for summary tables and ``--json``."""

    stage: str
    task: str
    out: str
    delta_density: float
    metrics: dict[str, float]
    original_metrics: dict[str, float]
    primary: str
    higher_is_better: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_change(self) -> float | None:
        """Signed relative change of the primary metric vs the original (+ = better)."""
        new, old = self.metrics.get(self.primary), self.original_metrics.get(self.primary)
        if new is None or old is None or old == 0:
            return None
        change = (new - old) / abs(old)
        return change if self.higher_is_better else -change

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``relative_change`` and the stage's extra fields."""
        return {"stage": self.stage, "task": self.task, "out": self.out, "delta_density": self.delta_density,
                "metrics": self.metrics, "original_metrics": self.original_metrics, "primary": self.primary,
                "relative_change": self.relative_change, **self.extra}


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes: proves later stages use the same base weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def load_pair(base: str | os.PathLike, task: str | os.PathLike
              ) -> tuple[SingleTaskModel, CheckpointInfo, SingleTaskModel, CheckpointInfo]:
    """Load the base and a sub-task checkpoint and check they can share a backbone."""
    base_model, base_info = load_checkpoint(base)
    task_model, task_info = load_checkpoint(task)
    if task_info.task == base_info.task:
        raise MtlCompressError(f"{task} is a '{task_info.task}' checkpoint, the same task as the base {base}; "
                               "a sub-task must be a different task")
    if base_info.backbone.mlp_layer == "swiglu":
        raise CheckpointError(f"{base}: the sparsify stages put weight and activation deltas on mlp.fc1/fc2, and a "
                              "SwiGLU MLP (fc1_g, fc1_x) has no fc1; bundle these checkpoints unsparsified "
                              "(mtlcompress export) and run them by the dense path")
    if backbone_signature(base_info.backbone) != backbone_signature(task_info.backbone):
        raise CheckpointError(f"{task}: backbone {task_info.backbone.describe()} differs from the base's "
                              f"{base_info.backbone.describe()}; both must come from one architecture")
    recorded = task_info.sparsity.get("base", {}).get("fingerprint")
    if recorded and recorded != weights_fingerprint(base_model.backbone.state_dict()):
        raise CheckpointError(f"{task} was sparsified against a different base than {base}")
    return base_model, base_info, task_model, task_info


def student_from(base_model: SingleTaskModel, task_model: SingleTaskModel) -> SingleTaskModel:
    """The sub-task model with the base's backbone weights (its ``W_0``) and its own head."""
    student = copy.deepcopy(task_model)
    student.backbone.load_state_dict(base_model.backbone.state_dict())
    return student.train()


def weight_delta(task_model: SingleTaskModel, base_model: SingleTaskModel) -> dict[str, torch.Tensor]:
    base = dict(base_model.backbone.named_parameters())
    return {n: (p - base[n]).detach() for n, p in task_model.backbone.named_parameters()}


def delta_density(task_model: SingleTaskModel, base_model: SingleTaskModel) -> float:
    deltas = weight_delta(task_model, base_model)
    return sum(int((d != 0).sum()) for d in deltas.values()) / sum(d.numel() for d in deltas.values())


@dataclass
class StageData:
    spec: TaskSpec
    supervision: str
    train: DenseDataset
    val: DenseDataset | None
    num_classes: int | None


def stage_data(data: str | os.PathLike, info: CheckpointInfo, supervision: str) -> StageData:
    """Training images (labelled or not) and, if labelled, the held-out split."""
    spec = get_task(info.task)
    probe = open_dataset(data, split="train", tasks=[], size=info.backbone.img_size)
    chosen = resolve_supervision(supervision, info.task, probe.available_tasks)
    label_tasks = [info.task] if info.task in probe.available_tasks else []
    train = open_dataset(data, split="train", tasks=label_tasks, size=info.backbone.img_size)
    val = open_dataset(data, split="val", tasks=label_tasks, size=info.backbone.img_size) if label_tasks else None
    return StageData(spec, chosen, train, val, info.num_classes)


def evaluate_on(model: SingleTaskModel, data: StageData, device: torch.device | None = None) -> dict[str, float]:
    """Held-out metrics (none without labels), in fp32 on ``device`` (default: where the model is)."""
    if data.val is None:
        return {}
    return evaluate_model(model, data.val, data.spec, data.num_classes, device=device)


def write_stage_output(model: SingleTaskModel, info: CheckpointInfo, out: str | os.PathLike, *, stage: str,
                       metrics: dict[str, float], sparsity: dict[str, Any], training: dict[str, Any]) -> None:
    new_info = copy.deepcopy(info)
    history = list(info.sparsity.get("history", []))
    history.append({"stage": stage, "metrics": metrics, **{k: v for k, v in sparsity.items() if k != "activation"}})
    new_info.sparsity = {**info.sparsity, **sparsity, "stage": stage, "history": history}
    new_info.metrics = metrics or info.metrics
    new_info.training = training
    save_checkpoint(model, new_info, out)


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """A stage's checkpoint output: a ``.safetensors`` file, replaced only with ``overwrite``
    (the CLI also checks it against the stage's inputs)."""
    return check_writable_output(out, overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)


def finish_stage(*, stage: str, model: SingleTaskModel, base_model: SingleTaskModel, info: CheckpointInfo,
                 data: StageData, out: Path, run_id: dict[str, Any], sparsity: dict[str, Any],
                 extra: dict[str, Any] | None = None, device: torch.device | None = None) -> StageResult:
    """Measure and evaluate on ``device`` (default: where ``model`` is), write the stage's
    output and drop its resume state.

    Under ``torchrun`` every rank measures and evaluates (the same weights, the same
    images, no collectives: nothing to deadlock on); only rank 0 writes (the state dict
    goes to the CPU there), and the others wait for the file, which a pipeline's next
    stage reads.
    """
    if device is not None:
        to_device(model, base_model, device=device)
    achieved = delta_density(model, base_model)
    metrics = evaluate_on(model, data, device)
    original = sparsity.get("original_metrics", info.sparsity.get("original_metrics", {}))
    if world()[0] == 0:
        write_stage_output(model, info, out, stage=stage, metrics=metrics,
                           sparsity={**sparsity, "delta_density": achieved}, training=run_id)
        resume_state_path(out).unlink(missing_ok=True)
    wait_for_all_ranks()
    metric = data.spec.metric(data.num_classes)
    return StageResult(stage, info.task, str(out), achieved, metrics, original, metric.primary,
                       metric.higher_is_better, {"supervision": data.supervision, **(extra or {})})


def result_from_checkpoint(path: str | os.PathLike) -> StageResult:
    """The summary of a stage that already ran, read back from its output."""
    info = read_checkpoint_info(path)
    metric = get_task(info.task).metric(info.num_classes or 1)
    extra = {k: v for k, v in info.sparsity.items()
             if k not in ("history", "activation", "base", "original_metrics", "delta_density", "stage")}
    return StageResult(info.sparsity.get("stage", "?"), info.task, str(path), info.sparsity.get("delta_density", 0.0),
                       info.metrics, info.sparsity.get("original_metrics", {}), metric.primary,
                       metric.higher_is_better, {**extra, "skipped": True})


def load_source(info_sparsity: dict[str, Any]) -> SingleTaskModel | None:
    """The original sub-task checkpoint recorded by stage 1 (the distillation teacher)."""
    source = info_sparsity.get("source")
    if source and Path(source).exists():
        return load_checkpoint(source)[0]
    return None
