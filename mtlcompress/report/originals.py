"""The original single-task model behind each bundle task, so that ``inspect --data``
scores it on the same images as the bundle: like against like.

A checkpoint's stored metrics were measured on its own evaluation split (often the
whole split, with other images than ``inspect`` runs), so comparing them with the
bundle's score mixes a data difference into the compression loss. Where the original
model can be rebuilt or found, it is run in the same pass instead:

* the base task, and a sub-task that was not sparsified: ``Bundle.task_model`` equals
  the checkpoint the bundle was built from (base weights + exact delta + head);
* a sparsified sub-task: the checkpoint before sparsification, whose path stage 1
  recorded as ``sparsity.source`` (``Bundle.task_model`` would give the *sparsified*
  weights), when that file still exists and is that task's checkpoint.

Otherwise only the stored numbers are left, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.models.backbone import backbone_signature
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.models.single_task import SingleTaskModel

FROM_BUNDLE = "bundle"
FROM_CHECKPOINT = "checkpoint"
STORED_ONLY = "stored"


@dataclass
class OriginalModel:
    """Where a task's original single-task model comes from, and the model when found.

    Attributes:
        task: the bundle task.
        source: ``"bundle"`` (rebuilt from the bundle, equal to its checkpoint),
            ``"checkpoint"`` (the pre-sparsification file at ``path``) or ``"stored"``
            (not available: only ``stored_metrics`` are known; ``reason`` says why).
        path: the original checkpoint's file, when one is recorded.
        stored_metrics: the original's metrics as stored in checkpoint metadata,
            measured on that checkpoint's own evaluation data.
        model: the model in eval mode, or ``None`` for ``"stored"``.
        reason: why the original model is not available (``"stored"`` only).
    """

    task: str
    source: str
    path: str | None
    stored_metrics: dict[str, Any] = field(default_factory=dict)
    model: SingleTaskModel | None = None
    reason: str | None = None


def find_original(bundle: Bundle, task: str) -> OriginalModel:
    """The original single-task model of ``task`` (see the module doc for the rules)."""
    entry = bundle.task(task)
    sparsity = entry.provenance.get("sparsity") or {}
    source = sparsity.get("source")
    if not source:
        return OriginalModel(task, FROM_BUNDLE, entry.provenance.get("path"),
                             dict(entry.provenance.get("metrics") or {}), bundle.task_model(task))
    stored = dict(sparsity.get("original_metrics") or {})
    if not Path(source).is_file():
        return OriginalModel(task, STORED_ONLY, source, stored, reason=f"original checkpoint {source} not found")
    try:
        model, info = load_checkpoint(source)
    except MtlCompressError as exc:
        return OriginalModel(task, STORED_ONLY, source, stored, reason=f"original checkpoint unreadable: {exc}")
    if info.task != task or backbone_signature(info.backbone) != backbone_signature(bundle.backbone):
        return OriginalModel(task, STORED_ONLY, source, stored,
                             reason=f"{source} is no longer this task's original checkpoint (task '{info.task}', "
                                    f"backbone {info.backbone.describe()})")
    return OriginalModel(task, FROM_CHECKPOINT, source, stored or dict(info.metrics), model)
