"""Resumable training state in our container format (no pickle): model tensors,
optimizer tensors, the step, and the JSON needed to check a resume is the same run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mtlcompress.errors import CheckpointError
from mtlcompress.io.container import read_container_header, read_container_tensors, write_container

FORMAT_NAME = "mtlcompress.train_state"
FORMAT_VERSION = 1


def save_training_state(path: str | os.PathLike, *, step: int, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, run: dict[str, Any]) -> None:
    """``run`` identifies the run (config, inputs); resuming checks it matches."""
    model_state = model.state_dict()
    tensors = {f"model.{k}": v for k, v in model_state.items() if isinstance(v, torch.Tensor)}
    # Non-tensor module state (e.g. a controller's settings via get_extra_state) goes to JSON.
    model_extra = {k: v for k, v in model_state.items() if not isinstance(v, torch.Tensor)}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in opt_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    document = {"step": step, "run": run, "model_extra": model_extra, "param_groups": opt_state["param_groups"], "optim_scalars": scalars}
    write_container(path, tensors, format_name=FORMAT_NAME, version=FORMAT_VERSION, document=document)


def load_training_state(path: str | os.PathLike, *, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, run: dict[str, Any]) -> int:
    """Restore model and optimizer in place; returns the step to continue from."""
    path = Path(path)
    _, doc = read_container_header(path, format_name=FORMAT_NAME, versions=(FORMAT_VERSION,), error=CheckpointError)
    if doc.get("run") != run:
        raise CheckpointError(
            f"{path}: saved state belongs to a run with different settings; delete it or pass --no-resume"
        )
    tensors = read_container_tensors(path, error=CheckpointError)
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
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    return int(doc["step"])
