"""Video frames of token-granularity tasks, row by row, all tasks in lockstep.

Between keyframes a task's frame only needs the token rows whose input changed since
the last frame (every part of a ViT block but attention is row-wise; see
:meth:`LockstepRows.frame`). Those rows are few, so the work per part is small and a
per-task loop would be dominated by the fixed cost of each operator call. Here the
tasks' states are stacked into one ``[T * B * N, C]`` tensor per activation and every
part runs once for all tasks: the rows of all tasks are gathered together, norms
apply each row's own task's parameters, one thresholding and one drift update cover
all tasks, attention is updated on the ``T * B`` sequences at once (for the moved
tokens only: :mod:`~mtlcompress.runtime.incremental_attention`). The linear layers
run one GEMM per task on that task's changed rows, or one GEMM with the shared base
weight for all of them plus each sub-task's sparse weight delta. A keyframe runs here
too, every row of every task exactly (:meth:`LockstepRows.keyframe`), and leaves
behind the state the next frame continues from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from mtlcompress.runtime import incremental_attention, kernels
from mtlcompress.runtime.cost_model import choose_stacking
from mtlcompress.runtime.layer_plan import EngineTask, LayerPlanner
from mtlcompress.runtime.row_state import (
    RowState,
    StateRecycler,
    attention_sum_tensors,
    by_task,
    flat_rows,
    per_row,
    rows_out,
)
from mtlcompress.runtime.stacked_blocks import act_in_place, linear_into, stack_blocks, unit_layer_norm


__all__ = ["LockstepRows", "RowState"]

_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
# The layers whose last output a frame reads back (the residual adds it to rows that did
# not move here). The others' outputs live on in the block state (``heads``, ``act``).
_OUTPUT_KEPT = ("attn.proj", "mlp.fc2")
# Row-wise work on more than this share of the rows runs on whole tensors: gathering and
# scattering most rows costs more than computing the few unchanged ones again (which
# gives the values they already have).
_WHOLE_ABOVE = 0.5
# Stacking choices kept per layer and row counts (dropped all at once beyond this many).
_MAX_STACKING_CHOICES = 4096


class LockstepRows:
    """The token-granularity ``tasks`` of an engine, run together on video frames.

    Args:
        planner: the engine's layer planner (the base task's weights, kernel timings
            and ``dW`` operands).
        tasks: the tasks, in output order.
        timed: ``timed(kind)`` returns the profiling context for one part.
    """

    def __init__(self, planner: LayerPlanner, tasks: Sequence[EngineTask], timed: Callable[[str], Any]) -> None:
        self.tasks = list(tasks)
        self._planner = planner
        self._timed = timed
        blocks = [task.backbone.blocks for task in self.tasks]
        self.depth = len(blocks[0])
        self._blocks = [stack_blocks([b[i] for b in blocks]) for i in range(self.depth)]
        self._stacking: dict[tuple, bool] = {}  # (layer, *row counts) -> choose_stacking's answer
        self._taus: dict[str, Tensor] = {}
        self._thresholded: dict[str, list[int]] = {}  # layer -> tasks with a temporal threshold there
        for i in range(self.depth):
            for kind in _LINEARS:
                name = f"blocks.{i}.{kind}"
                layers = [task.layers[name] for task in self.tasks]
                self._taus[name] = torch.tensor([-float("inf") if layer.temporal_tau is None else layer.temporal_tau
                                                 for layer in layers], device=layers[0].weight.device)
                self._thresholded[name] = [t for t, layer in enumerate(layers) if layer.temporal_tau is not None]

    # ----------------------------------------------------------------------------------
    # State.
    # ----------------------------------------------------------------------------------
    def keyframe(self, embeds: Sequence[Tensor], recycle: RowState | None = None) -> tuple[RowState, list[Tensor]]:
        """Every task in full and exactly (no thresholds) on its tokens entering block 0
        (``embeds``: ``[B, N, C]`` each): the state later frames continue from, and each
        task's block output ``[B, N, C]``. The new state is written into the tensors of
        ``recycle``, a state nothing reads any more, where their shapes allow."""
        shape = embeds[0].shape
        x = torch.cat([e.reshape(-1, shape[-1]) for e in embeds])
        state = RowState(refs={}, blocks=[], embed=x, residual={}, rows_per_task=shape[0] * shape[1])
        free = StateRecycler(recycle)
        with self._timed("norm_act"):
            (h1,) = self._norms(state, 0, "norm1")(None, x, outs=(free.empty("0/h1", x.shape, x),))
        for i, params in enumerate(self._blocks):
            prefix = f"blocks.{i}."
            saved = {"h1": h1}
            qkv = self._keyframe_linear(state, prefix + "attn.qkv", h1, free)
            with self._timed("attention"):
                heads = _heads(qkv, shape[1], params.attn)
                saved["heads"] = [free.copy(f"{i}/heads/{j}", part) for j, part in enumerate(heads)]
                attn, sums = incremental_attention.full_attention(*saved["heads"], params.attn.scale)
                saved["attn_sums"] = incremental_attention.AttentionSums(
                    *(free.keep(f"{i}/attn_sums/{j}", t) for j, t in enumerate(attention_sum_tensors(sums))))
                saved["attn"] = free.keep(f"{i}/attn", attn.view(qkv.shape[0], params.attn.attn_dim))
            h = self._keyframe_linear(state, prefix + "attn.proj", saved["attn"], free)
            with self._timed("norm_act"):
                saved["x_mid"], saved["h2"] = self._residual_norm(state, params.ls1, i, "norm2")(
                    None, x, h, outs=(free.empty(f"{i}/x_mid", x.shape, x), free.empty(f"{i}/h2", x.shape, x)))
            saved["act"] = self._keyframe_linear(state, prefix + "mlp.fc1", saved["h2"], free, act=params.act)
            h = self._keyframe_linear(state, prefix + "mlp.fc2", saved["act"], free)
            outs = [free.empty(f"{i}/x_out", x.shape, x)]
            if i + 1 < self.depth:
                outs.append(free.empty(f"{i + 1}/h1", x.shape, x))
            with self._timed("norm_act"):
                x, *rest = self._residual_norm(state, params.ls2, i + 1, "norm1")(None, saved["x_mid"], h, outs=outs)
            saved["x_out"] = x
            h1 = rest[0] if rest else None
            state.blocks.append(saved)
        return state, list(x.view(len(self.tasks), *shape).unbind(0))

    def _keyframe_linear(self, state: RowState, name: str, x: Tensor, free: StateRecycler,
                         act: nn.Module | None = None) -> Tensor:
        """The layer on every row (then ``act``, if given, for fc1: written in place
        into the block's ``act`` buffer); ``x`` becomes its reference input (a copy:
        the activation itself moves on without it), with no unpropagated error yet.
        Outputs the state keeps are computed straight into their recycled buffers."""
        with self._timed(name.rsplit(".", 1)[-1]):
            kept = name.endswith(_OUTPUT_KEPT)
            key = f"{name.split('.')[1]}/act" if act is not None else f"{name}/out" if kept else None
            width = self._planner.base.layers[name].weight.shape[0]
            out = None if key is None else free.empty(key, (x.shape[0], width), x)
            outputs = self._linear_rows(name, x, [state.rows_per_task] * len(self.tasks), out=out)
            state.refs[name] = (free.copy(f"{name}/in", x), outputs if kept else None)
            if self._thresholded[name]:
                norm = _squared_norms(x)
                state.residual[name] = torch.stack([torch.zeros_like(norm), norm])
        if act is not None:
            with self._timed("norm_act"):
                outputs = act_in_place(act, outputs)
        return outputs

    # ----------------------------------------------------------------------------------
    # One frame.
    # ----------------------------------------------------------------------------------
    def frame(self, state: RowState, embeds: Sequence[Tensor], measured: list, drifts: list) -> list[Tensor]:
        """Run the blocks on one frame after :meth:`keyframe`; ``embeds``: each task's
        ``[B, N, C]`` tokens after the embedding. Returns each task's block output
        ``[B, N, C]``.

        Exact, because every part but attention is row-wise: a row whose input did not
        change has the same output as last frame, and its delta to the layer's
        reference is the one already found below threshold. Attention mixes rows, so
        its output is examined in full, unless no row of its input changed (then it is
        last frame's). Rows are bool masks over ``T * B * N``.
        ``measured`` receives ``(layer, kept mask)``, ``drifts`` the per-row squares.
        """
        shape = embeds[0].shape
        x = torch.cat([e.reshape(-1, shape[-1]) for e in embeds])
        changed = (x != state.embed).any(dim=-1)
        state.embed = x
        (h1,) = self._update_rows((state.blocks[0]["h1"],), changed, self._norms(state, 0, "norm1"), x)
        for i, params in enumerate(self._blocks):
            saved = state.blocks[i]
            prefix = f"blocks.{i}."
            kept, index = self._examine(state, prefix + "attn.qkv", h1, changed, measured, drifts)
            if index.numel():
                saved["attn"] = self._attention(state, i, params.attn, h1, kept, index, shape[1])
                attn_rows = None
            else:  # no query, key or value moved: attention gives last frame's output
                attn_rows = kept
            kept, index = self._examine(state, prefix + "attn.proj", saved["attn"], attn_rows, measured, drifts)
            self._propagate(state, prefix + "attn.proj", saved["attn"], index)
            changed = changed | kept
            # Rows that changed here are the rows every later row-wise part recomputes: one
            # gather feeds the residual and the next norm.
            x_mid, h2 = self._update_rows((saved["x_mid"], saved["h2"]), changed,
                                          self._residual_norm(state, params.ls1, i, "norm2"), x,
                                          state.refs[prefix + "attn.proj"][1])
            kept, index = self._examine(state, prefix + "mlp.fc1", h2, changed, measured, drifts)
            hidden = self._propagate(state, prefix + "mlp.fc1", h2, index)
            if hidden is not None:
                with self._timed("norm_act"):
                    saved["act"].index_copy_(0, index, params.act(hidden))
            kept, index = self._examine(state, prefix + "mlp.fc2", saved["act"], kept, measured, drifts)
            self._propagate(state, prefix + "mlp.fc2", saved["act"], index)
            changed = changed | kept
            outs = (saved["x_out"],) if i + 1 == self.depth else (saved["x_out"], state.blocks[i + 1]["h1"])
            x, *h1 = self._update_rows(outs, changed, self._residual_norm(state, params.ls2, i + 1, "norm1"), x_mid,
                                       state.refs[prefix + "mlp.fc2"][1])
            h1 = h1[0] if h1 else None
        return list(x.view(len(self.tasks), *shape).unbind(0))

    def _examine(self, state: RowState, name: str, x: Tensor, candidates: Tensor | None, measured: list,
                 drifts: list) -> tuple[Tensor, Tensor]:
        """The ``candidates`` rows of ``x`` (``None``: all) whose RMS delta to the layer's
        reference input reaches their task's threshold: as a bool mask over rows and as
        sorted row indices."""
        count = x.shape[0]
        with self._timed(name.rsplit(".", 1)[-1]):
            if not self._thresholded[name]:  # no threshold here: every candidate row moves on, no drift
                kept = torch.ones(count, dtype=torch.bool, device=x.device) if candidates is None else candidates
                return kept, kept.nonzero().squeeze(1)
            reference = state.refs[name][0]
            index = None if candidates is None else candidates.nonzero().squeeze(1)
            if index is None or index.numel() > _WHOLE_ABOVE * count:  # every row: no gather
                index, examined = None, x
            else:
                examined, reference = x.index_select(0, index), reference.index_select(0, index)
            rms = kernels.token_rms(examined - reference)
            keep = flat_rows(by_task(state, index, rms) >= per_row(state, index, self._taus[name]), index)
            self._track_drift(state, name, index, keep, rms, examined, drifts)
            if index is None:
                kept, keep_index = keep, keep.nonzero().squeeze(1)
            else:
                keep_index = index[keep]
                kept = torch.zeros(count, dtype=torch.bool, device=x.device).index_fill_(0, keep_index, True)
            measured.append((name, kept))
        return kept, keep_index

    def _propagate(self, state: RowState, name: str, x: Tensor, index: Tensor) -> Tensor | None:
        """Move the layer's reference input and output to ``x`` on the rows ``index``;
        returns their new outputs (``None`` if there are none)."""
        ref_in, ref_out = state.refs[name]
        with self._timed(name.rsplit(".", 1)[-1]):
            if not index.numel():
                return None
            inputs = x.index_select(0, index)
            ref_in.index_copy_(0, index, inputs)
            counts = torch.bincount(index // state.rows_per_task, minlength=len(self.tasks)).tolist()
            outputs = self._linear_rows(name, inputs, counts)
            if ref_out is not None:
                ref_out.index_copy_(0, index, outputs)
        return outputs

    def _linear_rows(self, name: str, inputs: Tensor, counts: list[int], out: Tensor | None = None) -> Tensor:
        """The layer on task-major ``inputs``, ``counts[t]`` rows of task ``t``: one GEMM
        per task, or, where the cost model prices it lower
        (:func:`~mtlcompress.runtime.cost_model.choose_stacking`), one GEMM with the
        base task's ``W_0`` for all of them plus ``dW_t x + db_t`` per sub-task: the
        shared weight is read from memory once instead of once per task. Into ``out``
        if given."""
        if self._stacks(name, counts):
            base = self._planner.base.layers[name]
            outputs = linear_into(inputs, base.weight, base.bias, out)
            for task, rows, task_out in zip(self.tasks, inputs.split(counts), outputs.split(counts)):
                layer = task.layers[name]
                if rows.shape[0] and task is not self._planner.base:
                    if layer.dw is not None:
                        dw = self._planner.weight_delta_operand(layer, rows.shape[0])
                        kernels.add_delta_weight_matmul_(task_out, rows, dw)
                    if layer.db is not None:
                        task_out += layer.db
            return outputs
        weight = self.tasks[0].layers[name].weight
        outputs = inputs.new_empty(inputs.shape[0], weight.shape[0]) if out is None else out
        for task, rows, task_out in zip(self.tasks, inputs.split(counts), outputs.split(counts)):
            if rows.shape[0]:
                layer = task.layers[name]
                linear_into(rows, layer.weight, layer.bias, task_out)
        return outputs

    def _stacks(self, name: str, counts: list[int]) -> bool:
        key = (name, *counts)
        stacks = self._stacking.get(key)
        if stacks is None:
            if len(self._stacking) >= _MAX_STACKING_CHOICES:
                self._stacking.clear()
            stacks = self._stacking[key] = self._price_stacking(name, counts)
        return stacks

    def _price_stacking(self, name: str, counts: list[int]) -> bool:
        if sum(1 for c in counts if c) < 2:
            return False
        weight = self.tasks[0].layers[name].weight
        densities = [0.0 if task is self._planner.base else task.layers[name].weight_density for task in self.tasks]
        return choose_stacking(self._planner.timings_for(weight.shape[1], weight.shape[0]), rows=counts,
                               in_features=weight.shape[1], out_features=weight.shape[0],
                               weight_densities=densities)

    def _attention(self, state: RowState, block: int, attn: nn.Module, h1: Tensor, kept: Tensor, index: Tensor,
                   tokens: int) -> Tensor:
        """Propagate the qkv layer's ``kept`` rows (``index``), then timm ``Attention``
        between its linear layers on all tasks' sequences at once, for what involves the
        moved tokens' queries, keys and values only
        (:mod:`~mtlcompress.runtime.incremental_attention`). Head-major copies of
        ``q, k, v`` live with the block state, updated on the moved rows, so the
        attention kernels never copy the fused ``qkv`` layout."""
        name = f"blocks.{block}.attn.qkv"
        saved = state.blocks[block]
        q, k, v = saved["heads"]
        positions = kept.view(-1, tokens).any(dim=0).nonzero().squeeze(1)
        k_old, v_old = k[:, :, positions], v[:, :, positions]  # copies: the moved tokens' old keys, values
        rows = self._propagate(state, name, h1, index)
        with self._timed("attention"):
            moved = rows.view(-1, 3, attn.num_heads, attn.head_dim)
            for part, new in zip((q, k, v), moved.unbind(1)):
                part[index // tokens, :, index % tokens] = new
            out = incremental_attention.update_attention(saved["attn_sums"], q, k, v, positions, k_old, v_old,
                                                         attn.scale)
        return out.view(h1.shape[0], attn.attn_dim)

    def kept_fractions(self, measured: list[tuple[str, Tensor]], rows_per_task: int) -> dict[str, dict[str, float]]:
        """Per task and thresholded layer, the kept fraction of the rows in ``measured``
        (entries of :meth:`frame`; one sync)."""
        if not measured:
            return {}
        values = torch.stack([kept.view(len(self.tasks), rows_per_task) for _, kept in measured]).float().mean(dim=-1)
        fractions: dict[str, dict[str, float]] = {}
        for (name, _), per_task in zip(measured, values.tolist()):
            for t in self._thresholded[name]:
                fractions.setdefault(self.tasks[t].name, {})[name] = per_task[t]
        return fractions

    def paths(self) -> dict[str, dict[str, str]]:
        """Per task and layer: ``"token"`` where it has a temporal threshold, else ``"exact"``."""
        return {task.name: {name: "token" if t in self._thresholded[name] else "exact" for name in self._taus}
                for t, task in enumerate(self.tasks)}

    def _track_drift(self, state: RowState, name: str, index: Tensor | None, keep: Tensor, rms: Tensor,
                     examined: Tensor, drifts: list) -> None:
        """Keep, per row, the squared unpropagated error and squared input norm of the layer
        (rows not examined did not change); ``shared_engine._relative_drift`` turns them
        into ``||x - x_propagated|| / ||x||`` per task and layer."""
        squares = state.residual[name]
        error = torch.where(keep, 0.0, rms.square() * examined.shape[-1])
        norm = _squared_norms(examined)
        if index is None:
            squares.copy_(torch.stack([error, norm]))
        else:
            squares.index_copy_(1, index, torch.stack([error, norm]))
        drifts.append(squares.view(2, len(self.tasks), -1))

    # ----------------------------------------------------------------------------------
    # Row-wise parts: each row with its own task's parameters.
    # ----------------------------------------------------------------------------------
    def _update_rows(self, outs: tuple[Tensor, ...], rows: Tensor, fn: Callable[..., tuple[Tensor, ...]],
                     *inputs: Tensor) -> tuple[Tensor, ...]:
        """``outs = fn(index, *inputs)`` recomputed, in place, on ``rows`` only (on
        every row, ``fn`` writes into ``outs`` itself)."""
        with self._timed("norm_act"):
            index = rows.nonzero().squeeze(1)
            if index.numel() > _WHOLE_ABOVE * rows.numel():
                fn(None, *inputs, outs=outs)
                return outs
            for out, value in zip(outs, fn(index, *(t.index_select(0, index) for t in inputs))):
                out.index_copy_(0, index, value)
            return outs

    def _norms(self, state: RowState, block: int, which: str) -> Callable[..., tuple[Tensor]]:
        """``norm1`` or ``norm2`` of ``block``, each row with its task's parameters
        (into ``outs``, if given, on every row)."""
        params = self._blocks[block]
        position = 0 if which == "norm1" else 1
        weight, bias = (params.norm1, params.norm2)[position]

        def norm(index: Tensor | None, x: Tensor, outs: Sequence[Tensor] | None = None) -> tuple[Tensor]:
            normed = by_task(state, index, unit_layer_norm(params, x, position))
            return (flat_rows(torch.addcmul(per_row(state, index, bias), normed, per_row(state, index, weight),
                                             out=rows_out(state, outs, 0)), index),)
        return norm

    def _residual_norm(self, state: RowState, gamma: Tensor | None, block: int,
                       which: str) -> Callable[..., tuple[Tensor, ...]]:
        """``x + gamma * h`` (the residual add), then, if ``block`` exists, its norm
        ``which`` of that sum (into ``outs``, if given, on every row)."""
        norm = self._norms(state, block, which) if block < self.depth else None

        def residual_norm(index: Tensor | None, x: Tensor, h: Tensor,
                          outs: Sequence[Tensor] | None = None) -> tuple[Tensor, ...]:
            if gamma is None:
                out = torch.add(x, h, out=None if outs is None else outs[0])
            else:
                out = flat_rows(torch.addcmul(by_task(state, index, x), by_task(state, index, h),
                                              per_row(state, index, gamma), out=rows_out(state, outs, 0)), index)
            if norm is None:
                return (out,)
            return (out, *norm(index, out, None if outs is None else outs[1:]))
        return residual_norm


def _squared_norms(rows: Tensor) -> Tensor:
    """Each row's squared L2 norm in fp32: the drift bound's denominator."""
    return torch.linalg.vector_norm(rows, dim=-1, dtype=torch.float32).square()


def _heads(qkv: Tensor, tokens: int, attn: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """timm's split of fused ``qkv`` rows ``[S * N, 3 * H * D]`` into head-major
    ``q, k, v`` views ``[S, H, N, D]``."""
    return qkv.view(-1, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
