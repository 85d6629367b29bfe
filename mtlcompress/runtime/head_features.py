"""The block outputs multi-level heads read, gathered from where the shared engine's
block loops leave them (each task's own tokens: for a sub-task, base plus its delta).

``levels`` maps a 1-based block index to one ``[B, N, C]`` tensor per task, in the
loop's task order; ``SingleTaskModel.head_output`` takes one task's share of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from mtlcompress.runtime.layer_plan import EngineTask
from mtlcompress.runtime.row_state import RowState

__all__ = ["feature_blocks", "lockstep_levels", "task_levels"]


def feature_blocks(tasks: Sequence[EngineTask]) -> list[int]:
    """Every block (1-based) some task's head reads besides the last, in order."""
    return sorted({block for task in tasks for block in task.model.feature_blocks})


def task_levels(levels: Mapping[int, Sequence[Tensor]], index: int) -> dict[int, Tensor]:
    """Task ``index``'s block outputs out of every task's."""
    return {block: outputs[index] for block, outputs in levels.items()}


def lockstep_levels(rows: RowState, blocks: Sequence[int], tasks: int, shape: Sequence[int]) -> dict[int, list[Tensor]]:
    """The row path's block outputs (``x_out`` of each block, kept up to date frame by
    frame in ``rows``) per task, as ``[B, N, C]`` views; read them before the next frame."""
    return {block: list(rows.blocks[block - 1]["x_out"].view(tasks, *shape).unbind(0)) for block in blocks}
