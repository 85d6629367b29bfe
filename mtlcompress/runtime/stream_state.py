"""What a shared-engine video stream remembers between frames."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mtlcompress.runtime.incremental_embed import PatchEmbedState
from mtlcompress.runtime.incremental_head import HeadState
from mtlcompress.runtime.row_state import RowState


@dataclass
class TaskStreamState:
    """One task's memory of the last frame, for the temporal domain: per shared linear
    layer, the last *propagated* input and its output (the reference every new frame's
    delta is measured against); its patch embedding (if it has its own) and head, where
    they can be updated where the frame changed (``None``: computed in full)."""

    refs: dict[str, tuple[Tensor, Tensor]]
    embed: PatchEmbedState | None = None
    head: HeadState | None = None


@dataclass
class StreamState:
    """A video stream's state: per task (references of element-granularity tasks,
    embeddings and heads) and the token-granularity tasks' stacked rows. ``spare``: rows
    of an earlier keyframe period, for the next keyframe to write over."""

    tasks: dict[str, TaskStreamState]
    rows: RowState | None = None
    spare: RowState | None = None
