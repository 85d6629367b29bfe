"""The single-task checkpoint format: one safetensors file, weights + JSON metadata.

Document layout (format ``mtlcompress.single_task``, version 1)::

    {"task": "depth", "num_classes": null, "class_names": [...],
     "backbone": BackboneConfig, "head": {"type": "dense", "out_channels": 1, "hidden": 128},
     "training": {...}, "metrics": {...}, "sparsity": {...}, "mtlcompress_version": "0.1.0"}

A ``multilevel`` head adds ``"layers": [3, 6, 9, 12]`` (the blocks it reads, 1-based); a
``module`` head adds ``"module": "package.module:factory"`` (see ``models.head_module``).

Loading validates the document, the task, and every tensor name and shape against the
model the document describes, so a wrong or damaged file fails with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtlcompress.version import __version__
from mtlcompress.errors import CheckpointError, MtlCompressError
from mtlcompress.io.container import (
    check_tensor_names,
    check_tensor_shapes,
    read_container_header,
    read_container_shapes,
    read_container_tensors,
    write_container,
)
from mtlcompress.models.backbone import BackboneConfig, check_int_range
from mtlcompress.models.heads import (
    MAX_HEAD_CHANNELS,
    build_head,
    head_layers_from_dict,
    head_module_from_dict,
    head_sizes_from_dict,
    head_type_from_dict,
)
from mtlcompress.models.single_task import SingleTaskModel
from mtlcompress.tasks.registry import get_task

FORMAT_NAME = "mtlcompress.single_task"
FORMAT_VERSION = 1


@dataclass
class CheckpointInfo:
    """The metadata of a single-task checkpoint."""

    task: str
    backbone: BackboneConfig
    out_channels: int
    head_hidden: int = 128
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # Set by `sparsify`: base checkpoint, delta density, activation thresholds.
    sparsity: dict[str, Any] = field(default_factory=dict)
    head_type: str = "dense"  # a name in ``models.heads.HEADS``
    head_layers: tuple[int, ...] | None = None  # blocks (1-based) a multi-level head reads
    head_module: str | None = None  # ``package.module:factory`` of a user's head (``models.head_module``)

    def head_record(self) -> dict[str, Any]:
        """The document's ``head`` object (``layers`` and ``module`` only where set)."""
        record: dict[str, Any] = {"type": self.head_type, "out_channels": self.out_channels,
                                  "hidden": self.head_hidden}
        if self.head_layers is not None:
            record["layers"] = list(self.head_layers)
        if self.head_module is not None:
            record["module"] = self.head_module
        return record

    def to_document(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "backbone": self.backbone.to_dict(),
            "head": self.head_record(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "training": self.training,
            "metrics": self.metrics,
            "sparsity": self.sparsity,
            "mtlcompress_version": __version__,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any], path: Path) -> CheckpointInfo:
        """Check every field's type and range; nothing is built from an unchecked number."""
        try:
            if "backbone" not in doc:
                raise KeyError("backbone")
            backbone = BackboneConfig.from_dict(doc["backbone"])
            task = doc["task"]
            if not isinstance(task, str):
                raise CheckpointError("metadata field 'task' must be a string")
            out_channels, head_hidden = head_sizes_from_dict(doc["head"])
            head_type = head_type_from_dict(doc["head"])
            head_layers = head_layers_from_dict(doc["head"], backbone.depth)
            head_module = head_module_from_dict(doc["head"])
            num_classes = doc.get("num_classes")
            if num_classes is not None:
                check_int_range("metadata field 'num_classes'", num_classes, 1, MAX_HEAD_CHANNELS)
            class_names = doc.get("class_names") or []
            if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
                raise CheckpointError("metadata field 'class_names' must be a list of strings")
            sections = {}
            for name in ("training", "metrics", "sparsity"):
                sections[name] = doc.get(name) or {}
                if not isinstance(sections[name], dict):
                    raise CheckpointError(f"metadata field '{name}' must be a JSON object")
            info = cls(task=task, backbone=backbone, out_channels=out_channels, head_hidden=head_hidden,
                       num_classes=num_classes, class_names=list(class_names), head_type=head_type,
                       head_layers=head_layers, head_module=head_module, **sections)
        except KeyError as exc:
            raise CheckpointError(f"{path}: metadata is missing the field {exc}") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        try:
            spec = get_task(info.task)
        except MtlCompressError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        expected = spec.out_channels(info.num_classes) if (spec.channels or info.num_classes) else None
        if expected is not None and expected != info.out_channels:
            raise CheckpointError(
                f"{path}: task '{info.task}' needs {expected} output channels, head has {info.out_channels}"
            )
        return info


def build_model(info: CheckpointInfo, *, initialise: bool = True) -> SingleTaskModel:
    """The model ``info`` describes (a ``module`` head imports its factory: ``models.head_module``)."""
    return SingleTaskModel(info.backbone, info.task, info.out_channels, info.head_hidden, initialise=initialise,
                           head_type=info.head_type, head_layers=info.head_layers, head_module=info.head_module)


def checkpoint_tensor_shapes(info: CheckpointInfo) -> dict[str, tuple[int, ...]]:
    """The {name: shape} a checkpoint described by ``info`` must hold, from a model on
    the meta device: costs no memory and no weight init, whatever sizes ``info`` claims."""
    with torch.device("meta"):
        model = SingleTaskModel(info.backbone, info.task, info.out_channels, info.head_hidden, initialise=False,
                                head_type=info.head_type, head_layers=info.head_layers, head_module=info.head_module)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def head_tensor_shapes(info: CheckpointInfo) -> dict[str, tuple[int, ...]]:
    """The head's {name: shape} alone, from a meta-device head of ``info.head_type``: for
    files that store one backbone and many heads (bundles), without a backbone per head."""
    with torch.device("meta"):
        head = build_head(info.head_type, info.backbone.embed_dim, info.out_channels, info.backbone.patch_size,
                          info.head_hidden, layers=info.head_layers, module=info.head_module)
    return {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}


def save_checkpoint(model: SingleTaskModel, info: CheckpointInfo, path: str | os.PathLike) -> None:
    """Atomically write ``model``'s weights with ``info`` as metadata."""
    write_container(path, model.state_dict(), format_name=FORMAT_NAME, version=FORMAT_VERSION,
                    document=info.to_document())


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read and validate only the metadata (cheap: no tensors are loaded)."""
    _, doc = read_container_header(path, format_name=FORMAT_NAME, versions=(FORMAT_VERSION,), error=CheckpointError)
    return CheckpointInfo.from_document(doc, Path(path))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SingleTaskModel, CheckpointInfo]:
    """Load and fully validate a single-task checkpoint; the model is in eval mode."""
    info = read_checkpoint_info(path)
    # Shapes from the header first: a file whose metadata claims a huge model fails here,
    # before that model is allocated.
    check_tensor_shapes(checkpoint_tensor_shapes(info), read_container_shapes(path, error=CheckpointError), Path(path),
                        error=CheckpointError, hint=" (wrong architecture?)")
    model = build_model(info)
    load_state_strict(model, read_container_tensors(path, error=CheckpointError), Path(path))
    return model.to(device).eval(), info


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict`` with one-line errors that name the first offending tensor."""
    expected = model.state_dict()
    check_tensor_names(expected, state, path, error=CheckpointError, hint=" (wrong architecture?)")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the architecture in the "
                f"metadata needs {tuple(expected[name].shape)}"
            )
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor '{name}' is not finite floating point")
    model.load_state_dict(state)
