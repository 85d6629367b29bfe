"""The stacked temporal state the lockstep row path (:mod:`~mtlcompress.runtime.lockstep`)
carries from one video frame to the next, and the recycling of a finished state's
memory by the next keyframe."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtlcompress.runtime import incremental_attention


@dataclass
class RowState:
    """The stacked temporal state of the lockstep tasks, every tensor flat over
    ``T * B * N`` rows (task-major). ``refs``: per linear layer, the last propagated
    input and its output (``None`` for layers outside ``lockstep._OUTPUT_KEPT``);
    ``blocks``: per block, the last frame's activations (``h1``, ``attn``, ``x_mid``, ``h2``, ``act``,
    ``x_out``), the head-major ``q, k, v`` (``heads``) and the attention sums
    (``attn_sums``); ``embed``: the tokens entering block 0; ``residual``: per
    thresholded layer, ``[2, rows]`` squared unpropagated error and squared input norm
    (drift without a full pass)."""

    refs: dict[str, tuple[Tensor, Tensor | None]]
    blocks: list[dict[str, Tensor]]
    embed: Tensor
    residual: dict[str, Tensor]
    rows_per_task: int


class StateRecycler:
    """The tensors of a state nothing reads any more, written over by a keyframe's new
    state: allocating a state's worth of fresh memory costs a page fault per 4 KiB,
    10-34% of a ViT-S keyframe's time on our 2-core test machine. Keys name a tensor's
    place in the state, so each buffer is reused for the same value of the next period."""

    def __init__(self, state: RowState | None) -> None:
        self._free = {} if state is None else dict(named_tensors(state))

    def keep(self, key: str, value: Tensor) -> Tensor:
        """``value``, copied into the free tensor ``key`` if that has its shape and dtype."""
        free = self._take(key, value)
        return value if free is None else free.copy_(value)

    def copy(self, key: str, value: Tensor) -> Tensor:
        """A contiguous copy of ``value``, in the free tensor ``key`` where it fits."""
        free = self._take(key, value)
        return value.clone(memory_format=torch.contiguous_format) if free is None else free.copy_(value)

    def empty(self, key: str, shape: Sequence[int], like: Tensor) -> Tensor:
        """A tensor of ``shape`` (``like``'s dtype and device) to compute into: the free
        tensor ``key`` where it fits."""
        free = self._take(key, like, shape)
        return like.new_empty(shape) if free is None else free

    def _take(self, key: str, like: Tensor, shape: Sequence[int] | None = None) -> Tensor | None:
        free = self._free.pop(key, None)
        wanted = (torch.Size(like.shape if shape is None else shape), like.dtype, like.device)
        if free is None or (free.shape, free.dtype, free.device) != wanted:
            return None
        return free


def named_tensors(state: RowState) -> Iterator[tuple[str, Tensor]]:
    """A state's large tensors under the keys :meth:`LockstepRows.keyframe` gives them."""
    for name, (ref_in, ref_out) in state.refs.items():
        yield f"{name}/in", ref_in
        if ref_out is not None:
            yield f"{name}/out", ref_out
    for i, saved in enumerate(state.blocks):
        for key in ("h1", "attn", "x_mid", "h2", "act", "x_out"):
            yield f"{i}/{key}", saved[key]
        for j, part in enumerate(saved["heads"]):
            yield f"{i}/heads/{j}", part
        for j, part in enumerate(attention_sum_tensors(saved["attn_sums"])):
            yield f"{i}/attn_sums/{j}", part


def attention_sum_tensors(sums: incremental_attention.AttentionSums) -> tuple[Tensor, Tensor, Tensor]:
    return sums.reference, sums.total, sums.weighted


# Views of the stacked rows: all tasks' rows at once, each with its own task's values.
def per_row(state: RowState, index: Tensor | None, values: Tensor) -> Tensor:
    """Per-task ``values`` (``[T, ...]``) for each row in ``index``; for every row
    (``None``), ``[T, 1, ...]`` to broadcast over :func:`by_task` views."""
    if index is None:
        return values.unsqueeze(1)
    return values.index_select(0, index // state.rows_per_task)


def by_task(state: RowState, index: Tensor | None, rows: Tensor) -> Tensor:
    """``rows`` as ``[T, rows per task, ...]`` if they are every row (``index`` is
    None), to meet :func:`per_row` values; else unchanged. :func:`flat_rows` undoes it."""
    return rows.view(-1, state.rows_per_task, *rows.shape[1:]) if index is None else rows


def rows_out(state: RowState, outs: Sequence[Tensor] | None, position: int) -> Tensor | None:
    """``outs[position]`` (every row) as the ``[T, rows per task, C]`` view row-wise
    results are computed in, for ``out=``; ``None`` without ``outs``."""
    return None if outs is None else by_task(state, None, outs[position])


def flat_rows(values: Tensor, index: Tensor | None) -> Tensor:
    """Rows flat again after :func:`by_task` (a view)."""
    return values.flatten(0, 1) if index is None else values
