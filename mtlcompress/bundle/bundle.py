"""The multi-task bundle in memory: one base backbone, a sparse weight delta per
sub-task, every task head, and each task's activation-sparsity settings.

Plain data: what is in the file. ``Bundle.from_checkpoints`` builds one from
single-task checkpoints (sparsified or not); ``bundle.format`` writes and reads it
(``save_bundle`` / ``load_bundle``); ``runtime.runner`` executes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtlcompress.errors import BundleError, MtlCompressError
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.models.backbone import BackboneConfig, backbone_signature
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, load_checkpoint
from mtlcompress.models.single_task import SingleTaskModel


@dataclass
class BundleTask:
    """One task inside a bundle. ``delta`` is empty for the base task."""

    info: CheckpointInfo
    head: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    activation: ActivationSparsity
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The task name (from its checkpoint info)."""
        return self.info.task


@dataclass
class Bundle:
    """One base backbone, each sub-task's weight delta, every head (see the module doc)."""

    backbone: BackboneConfig
    base_task: str
    base_weights: dict[str, torch.Tensor]
    tasks: dict[str, BundleTask]

    @property
    def sub_tasks(self) -> list[str]:
        """Every task but the base, in bundle order."""
        return [name for name in self.tasks if name != self.base_task]

    def task_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The task's full backbone weights, ``W_0 + dW_t``."""
        delta = self.task(name).delta
        return {k: (w + delta[k]) if k in delta else w for k, w in self.base_weights.items()}

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of every stored weight: base, deltas and heads (one per bundle)."""
        return next(iter(self.base_weights.values())).dtype

    def cast(self, dtype: torch.dtype) -> Bundle:
        """This bundle with every weight in ``dtype`` (itself if it already is).

        Each sub-task's delta is re-derived against the *cast* base, ``dtype(W_t - dtype(W_0))``,
        where it was non-zero: casting the delta alone would add the base's rounding error to
        every changed weight, re-deriving it everywhere would fill its zeros (its sparsity).
        Activation thresholds and metadata stay as they are.
        """
        if dtype == self.dtype:
            return self
        base = {k: w.to(dtype) for k, w in self.base_weights.items()}
        tasks = {}
        for name, entry in self.tasks.items():
            delta = {}
            for k, d in entry.delta.items():
                task_weight = self.base_weights[k].double() + d.double()
                delta[k] = torch.where(d != 0, task_weight - base[k].double(), 0.0).to(dtype)
            tasks[name] = dataclasses.replace(entry, delta=delta, head={k: h.to(dtype) for k, h in entry.head.items()})
        return Bundle(backbone=self.backbone, base_task=self.base_task, base_weights=base, tasks=tasks)

    def task(self, name: str) -> BundleTask:
        """The task's entry; an unknown name raises ``MtlCompressError`` listing the tasks."""
        if name not in self.tasks:
            raise MtlCompressError(f"task '{name}' is not in this bundle (it has {', '.join(self.tasks)})")
        return self.tasks[name]

    def task_model(self, name: str) -> SingleTaskModel:
        """A dense fp32 single-task model equal to the checkpoint the task was built from
        (a 16-bit bundle's rounded weights, in fp32; engines move it to their dtype).

        For a sparsified sub-task that is the *sparsified* model (base + sparse delta),
        not the original fine-tuned one; ``provenance["sparsity"]["source"]`` names that.
        """
        entry = self.task(name)
        model = build_model(entry.info)
        state = {f"backbone.{k}": v for k, v in self.task_weights(name).items()}
        state.update({f"head.{k}": v for k, v in entry.head.items()})
        model.load_state_dict(state)
        return model.eval()

    def delta_density(self, name: str) -> float:
        """Fraction of backbone weights whose delta is non-zero (0 for the base)."""
        delta = self.task(name).delta
        total = sum(w.numel() for w in self.base_weights.values())
        return sum(int((d != 0).sum()) for d in delta.values()) / total

    @classmethod
    def from_checkpoints(cls, base: str | os.PathLike, tasks: Sequence[str | os.PathLike]) -> Bundle:
        """Combine a base checkpoint and sub-task checkpoints (any delta density).

        Args:
            base: the base task's checkpoint; its backbone is stored dense.
            tasks: the other tasks' checkpoints (same architecture); each keeps only
                where its backbone differs from the base.

        Raises:
            BundleError: two checkpoints for one task, or different architectures.
        """
        paths = [Path(base), *[Path(p) for p in tasks if Path(p) != Path(base)]]
        loaded = [(path, *load_checkpoint(path)) for path in paths]
        _, base_model, base_info = loaded[0]
        base_weights = {k: v.detach().clone() for k, v in base_model.backbone.state_dict().items()}
        entries: dict[str, BundleTask] = {}
        for path, model, info in loaded:
            if info.task in entries:
                raise BundleError(f"{path}: a second checkpoint for task '{info.task}' "
                                  f"(first: {entries[info.task].provenance['path']})")
            if backbone_signature(info.backbone) != backbone_signature(base_info.backbone):
                raise BundleError(f"{path}: backbone {info.backbone.describe()} differs from the base checkpoint's "
                                  f"{base_info.backbone.describe()}; all tasks must share one architecture")
            weights = model.backbone.state_dict()
            delta = {} if path == paths[0] else {
                k: (w - base_weights[k]) for k, w in weights.items() if not torch.equal(w, base_weights[k])}
            try:
                activation = ActivationSparsity.from_dict(info.sparsity.get("activation"))
            except MtlCompressError as exc:
                raise BundleError(f"{path}: {exc}") from None
            entries[info.task] = BundleTask(
                info=info,
                head={k: v.detach().clone() for k, v in model.head.state_dict().items()},
                delta=delta,
                activation=activation,
                provenance={"path": str(path), "metrics": info.metrics, "training": info.training.get("stage"),
                            "sparsity": {k: v for k, v in info.sparsity.items() if k != "activation"}},
            )
        return cls(backbone=base_info.backbone, base_task=base_info.task, base_weights=base_weights, tasks=entries)

