"""Resumable training state in our container format (no pickle): model tensors,
optimizer tensors, the step, and the JSON needed to check a resume is the same run.

Only finite state is ever written or read back: a state with NaN or Inf in it cannot
be resumed into anything useful. The learning rate is the one setting a resume may
change (the cure for a diverged run); every change is kept in the state's
``lr_changes`` history.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtlcompress.errors import CheckpointError
from mtlcompress.io.container import read_container_header, read_container_tensors, write_container

FORMAT_NAME = "mtlcompress.train_state"
FORMAT_VERSION = 1


@dataclass
class ResumedState:
    """Where a resumed run continues: its step and the learning rates it has used."""

    step: int
    lr_changes: list[dict[str, Any]] = field(default_factory=list)
    grad_scaler: dict[str, Any] | None = None  # an fp16 run's loss-scaler state


def run_learning_rate(run: Mapping[str, Any]) -> float | None:
    """The run's base learning rate (``run["config"]["lr"]``), if it records one."""
    config = run.get("config")
    return config.get("lr") if isinstance(config, Mapping) else None


# Settings a resume may change: the learning rate (the cure for a diverged run) and where
# the run executes (a state written on a GPU resumes on the CPU and the other way round).
RESUMABLE_CHANGES = ("lr", "device", "workers")


def run_identity(run: Mapping[str, Any]) -> dict[str, Any]:
    """What must match for a resume: the whole run except ``RESUMABLE_CHANGES``."""
    identity = copy.deepcopy(dict(run))
    if isinstance(identity.get("config"), dict):
        for name in RESUMABLE_CHANGES:
            identity["config"].pop(name, None)
    return identity


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, else None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def training_state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Every tensor a saved state holds, under the names it is saved with."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    for param_id, entries in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{param_id}.{k}": v for k, v in entries.items() if isinstance(v, torch.Tensor)})
    return tensors


@dataclass
class TrainingStateSnapshot:
    """A copy of the state at one step (tensors on the CPU), to be written later."""

    step: int
    tensors: dict[str, torch.Tensor]
    document: dict[str, Any]


def snapshot_training_state(*, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            run: dict[str, Any], lr_changes: list[dict[str, Any]] | None = None,
                            grad_scaler: dict[str, Any] | None = None) -> TrainingStateSnapshot:
    """Copy the state now, so training can go on and the copy be written once it proved good.

    ``run`` identifies the run (config, inputs); resuming checks it matches.
    ``lr_changes`` is the history ``[{"step", "lr"}, ...]``; by default the run's own
    learning rate from step 0. ``grad_scaler`` is an fp16 run's loss-scaler state.
    """
    model_state = model.state_dict()
    tensors = {name: t.detach().to("cpu", copy=True) for name, t in training_state_tensors(model, optimizer).items()}
    # Non-tensor module state (e.g. a controller's settings via get_extra_state) goes to JSON.
    model_extra = {k: v for k, v in model_state.items() if not isinstance(v, torch.Tensor)}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in opt_state["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                scalars.setdefault(str(param_id), {})[key] = value
    if lr_changes is None:
        lr = run_learning_rate(run)
        lr_changes = [] if lr is None else [{"step": 0, "lr": lr}]
    document = {"step": step, "run": run, "model_extra": model_extra,
                "param_groups": copy.deepcopy(opt_state["param_groups"]), "optim_scalars": scalars,
                "lr_changes": list(lr_changes)}
    if grad_scaler is not None:
        document["grad_scaler"] = dict(grad_scaler)
    return TrainingStateSnapshot(step=step, tensors=tensors, document=document)


def write_training_state(path: str | os.PathLike, snapshot: TrainingStateSnapshot) -> None:
    """Write ``snapshot`` atomically; refuses (``CheckpointError``) non-finite state."""
    bad = first_non_finite(snapshot.tensors)
    if bad is not None:
        raise CheckpointError(f"{path}: not saving training state at step {snapshot.step}: "
                              f"tensor '{bad}' holds NaN or Inf")
    write_container(path, snapshot.tensors, format_name=FORMAT_NAME, version=FORMAT_VERSION,
                    document=snapshot.document)


def save_training_state(path: str | os.PathLike, *, step: int, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, run: dict[str, Any],
                        lr_changes: list[dict[str, Any]] | None = None) -> None:
    """Write the state now (see ``snapshot_training_state`` for the arguments)."""
    write_training_state(path, snapshot_training_state(step=step, model=model, optimizer=optimizer, run=run,
                                                       lr_changes=lr_changes))


def resume_training_state(path: str | os.PathLike, *, model: torch.nn.Module,
                          optimizer: torch.optim.Optimizer, run: dict[str, Any]) -> ResumedState:
    """Restore model and optimizer in place; the step to continue from and the
    learning-rate history, with this run's learning rate appended if it changed."""
    path = Path(path)
    _, doc = read_container_header(path, format_name=FORMAT_NAME, versions=(FORMAT_VERSION,), error=CheckpointError)
    saved_run = doc.get("run")
    if not isinstance(saved_run, dict) or run_identity(saved_run) != run_identity(run):
        raise CheckpointError(
            f"{path}: saved state belongs to a run with different settings; delete it or pass --no-resume"
        )
    step = doc.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: saved state has no valid step")
    tensors = read_container_tensors(path, error=CheckpointError)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor '{bad}' holds NaN or Inf; this state cannot be resumed: "
                              "delete it or pass --no-resume")
    model_state: dict[str, Any] = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model_state.update(doc.get("model_extra", {}))
    try:
        model.load_state_dict(model_state)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: saved model state does not fit ({str(exc).splitlines()[0]})") from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, entries in doc.get("optim_scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    # Learning rates come from this run's optimizer (built from its config), moments from the file.
    this_run_lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: saved optimizer state does not fit ({exc})") from None
    for group, lr in zip(optimizer.param_groups, this_run_lrs):
        group["base_lr"] = lr
        if group.get("constant_lr"):
            group["lr"] = lr
    scaler = doc.get("grad_scaler")
    return ResumedState(step=step, lr_changes=_lr_history(doc, saved_run, run, step),
                        grad_scaler=scaler if isinstance(scaler, dict) else None)


def load_training_state(path: str | os.PathLike, *, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, run: dict[str, Any]) -> int:
    """Restore model and optimizer in place; returns the step to continue from."""
    return resume_training_state(path, model=model, optimizer=optimizer, run=run).step


def _lr_history(doc: dict[str, Any], saved_run: dict[str, Any], run: dict[str, Any], step: int) -> list[dict[str, Any]]:
    history = doc.get("lr_changes")
    if not isinstance(history, list):  # a state written before the history existed
        lr = run_learning_rate(saved_run)
        history = [] if lr is None else [{"step": 0, "lr": lr}]
    lr = run_learning_rate(run)
    if isinstance(lr, (int, float)) and math.isfinite(lr) and (not history or history[-1].get("lr") != lr):
        history = [*history, {"step": step, "lr": lr}]
    return history
