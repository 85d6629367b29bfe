"""Images: every task's token rows stacked, each sub-task's shared linear layers
computed from the base task's (the task domain, all tasks in lockstep).

The base task runs exactly. A sub-task ``t`` meets each thresholded linear layer
``y = W_t x + b_t`` with the input ``x_0 + threshold(x_t - x_0)`` (the dense engine's
semantics), which is the base task's input ``x_0`` wherever the delta fell below the
threshold. On the token rows where it did,

    y_t = y_0 + dW_t x_0 + db_t,

and on the rows that changed, ``y_t = W_0 x + b_0 + dW_t x + db_t``. So per layer the
engine runs one GEMM with the base weight ``W_0`` over the base rows *and* every
sub-task's changed rows (the shared weight is read once, not once per task), and one
sparse product of all sub-tasks' ``[dW_t | db_t]``, stacked into one CSR matrix, with
those same rows and a 1 appended: the base rows give ``dW_t x_0 + db_t`` for every
sub-task at once. (The changed rows' products with the other sub-tasks' deltas are not
needed; one call still costs less than a call per task, on our 2-core CPU.) Where the
cost model prices a sub-task's layer lower as a plain layer, it runs plainly on its
input (``"dense"``); ``"element"`` adds ``W_t dx`` from the element-sparse delta
instead of recomputing rows.

Everything between the linear layers runs once for all tasks: the norms with each
row's own task's parameters, one attention call over the ``T x B`` sequences, GELU and
the residual adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from torch import Tensor

from mtlcompress.runtime import kernels
from mtlcompress.runtime.cost_model import choose_weight_path
from mtlcompress.runtime.layer_plan import LayerPlanner, TaskLayer
from mtlcompress.runtime.stacked_blocks import StackedBlock, act_in_place, linear_into, stack_blocks, unit_layer_norm


__all__ = ["TaskDomainRows", "attention_core"]


@dataclass
class _SharedLinear:
    """One shared linear layer of every task. ``stacked``: ``[dW_t | db_t]`` of the
    sub-tasks at positions ``members`` (those with a threshold and a delta, whose ``dW``
    the cost model prices as sparse), stacked along the output dimension in CSR;
    ``None`` if there are none."""

    base: TaskLayer
    subs: list[TaskLayer]
    stacked: Tensor | None
    members: list[int]


@dataclass
class _Plan:
    """How one sub-task runs one layer on this call (``task``: its position in the
    stack). ``inputs``: the whole input (``"dense"``, ``"exact"``) or the changed rows'
    (``"token"``, at ``index``); ``kept``: the thresholded delta (``"element"``)."""

    task: int
    path: str
    inputs: Tensor | None = None
    index: Tensor | None = None
    kept: Tensor | None = None


class TaskDomainRows:
    """All tasks of an engine on images, stacked ``[T, B * N, C]`` (base task first).

    Args:
        planner: the engine's layer planner: its base and sub-tasks, path choices,
            kernel timings and ``dW`` operands.
        timed: ``timed(kind)`` returns the profiling context for one part.
    """

    def __init__(self, planner: LayerPlanner, timed: Callable[[str], Any]) -> None:
        self._planner = planner
        self._timed = timed
        self.tasks = [planner.base, *planner.subs]
        blocks = [task.backbone.blocks for task in self.tasks]
        self._blocks = [stack_blocks([b[i] for b in blocks]) for i in range(len(blocks[0]))]
        self._linears: dict[str, _SharedLinear] = {}

    def run(self, embeds: Sequence[Tensor], measured: list, levels: dict[int, list[Tensor]] | None = None
            ) -> list[Tensor]:
        """The blocks on each task's tokens after the embedding (``embeds``: ``[B, N, C]``
        each, in task order); returns each task's block output ``[B, N, C]``.
        ``measured`` receives ``(task, layer, kept mask, changed rows)`` per sub-task and
        thresholded layer, as ``SharedEngine._record`` reads them. ``levels``: for each
        1-based block index among its keys, gets that block's output per task (what
        multi-level heads read)."""
        batch, tokens, width = embeds[0].shape
        x = torch.stack([e.reshape(batch * tokens, width) for e in embeds])
        for i, params in enumerate(self._blocks):
            prefix = f"blocks.{i}."
            with self._timed("norm_act"):
                h = _norm(params, x, 0)
            h = self._linear(prefix + "attn.qkv", h, measured)
            with self._timed("attention"):
                h = attention_core(params.attn, h.view(-1, tokens, h.shape[-1])).view(len(self.tasks), -1, width)
            h = self._linear(prefix + "attn.proj", h, measured)
            with self._timed("norm_act"):
                x = _residual(x, params.ls1, h)
                h = _norm(params, x, 1)
            h = self._linear(prefix + "mlp.fc1", h, measured)
            with self._timed("norm_act"):
                h = act_in_place(params.act, h)
            h = self._linear(prefix + "mlp.fc2", h, measured)
            with self._timed("norm_act"):
                x = _residual(x, params.ls2, h)
            if levels is not None and i + 1 in levels:  # a copy: x is updated in place
                levels[i + 1] = list(x.clone().view(len(self.tasks), batch, tokens, width).unbind(0))
        return list(x.view(len(self.tasks), batch, tokens, width).unbind(0))

    # ----------------------------------------------------------------------------------
    # One shared linear layer for every task.
    # ----------------------------------------------------------------------------------
    def _linear(self, name: str, x: Tensor, measured: list) -> Tensor:
        """The layer ``name`` of every task on its input ``x [T, R, in]``: ``[T, R, out]``."""
        with self._timed(name.rsplit(".", 1)[-1]):
            layer = self._shared_linear(name, x.shape[1])
            x0 = x[0]
            plans = self._plans(name, layer, x, measured)
            token = [plan for plan in plans if plan.path == "token"]
            product_needed = any(plan.path in ("token", "element") and plan.task - 1 in layer.members for plan in plans)
            # Every sub-task's changed rows, then the base rows, transposed: the sparse
            # kernel's operand as it is (the GEMM reads it transposed at no cost), with a
            # row of ones for the bias deltas beside the stacked weight deltas. Changed rows
            # first, so that the GEMM's base outputs end where the other tasks' begin.
            stacked = None
            rows = x0
            if token or product_needed:
                stacked = _stacked_transposed([*(plan.inputs for plan in token), x0], ones=product_needed)
                rows = stacked[:x0.shape[-1]].t()
            changed = rows.shape[0] - x0.shape[0]
            width = layer.base.weight.shape[0]
            buffer = x.new_empty(changed + x.shape[0] * x0.shape[0], width)
            linear_into(rows, layer.base.weight, layer.base.bias, buffer[:rows.shape[0]])
            y = buffer[changed:].view(x.shape[0], x0.shape[0], width)
            # [members * out, rows]: every member's dW x + db on every stacked row.
            products = kernels.sparse_dense_matmul(layer.stacked, stacked) if product_needed else None
            offset = 0
            for plan in plans:
                sub = layer.subs[plan.task - 1]
                out = y[plan.task]
                if plan.path in ("dense", "exact"):
                    linear_into(plan.inputs, sub.weight, sub.bias, out)
                    continue
                block = self._member_block(layer, plan.task, width)  # (members on these paths: products exist)
                if block is not None:  # y_0 + dW_t x_0 + db_t
                    torch.add(products[block, changed:].t(), y[0], out=out)
                else:
                    self._add_own_delta(sub, out.copy_(y[0]), x0)
                if plan.path == "element":
                    out += kernels.element_sparse_linear(plan.kept, sub.weight)
                    continue
                count = plan.index.numel()
                outputs = buffer[offset:offset + count]  # W_0 x + b_0 on this task's changed rows
                if block is not None:
                    outputs += products[block, offset:offset + count].t()
                else:
                    self._add_own_delta(sub, outputs, plan.inputs)
                out.index_copy_(0, plan.index, outputs)
                offset += count
            return y

    def _add_own_delta(self, sub: TaskLayer, out: Tensor, x: Tensor) -> None:
        """``out += dW_t x + db_t`` for a sub-task outside the stacked product."""
        if sub.dw is not None:
            kernels.add_delta_weight_matmul_(out, x, self._planner.weight_delta_operand(sub, x.shape[0]))
        if sub.db is not None:
            out += sub.db

    @staticmethod
    def _member_block(layer: _SharedLinear, task: int, width: int) -> slice | None:
        """The rows of the stacked product that hold sub-task ``task``'s ``dW x + db``."""
        if task - 1 not in layer.members:
            return None
        start = layer.members.index(task - 1) * width
        return slice(start, start + width)

    def _plans(self, name: str, layer: _SharedLinear, x: Tensor, measured: list) -> list[_Plan]:
        """Threshold every sub-task's input against the base task's and pick its path."""
        planner = self._planner
        x0 = x[0]
        thresholded = [sub.task_tau is not None for sub in layer.subs]
        delta = x[1:] - x0 if any(thresholded) else None
        rms = (kernels.token_rms(delta) if any(t and task.granularity == "token"
                                               for t, task in zip(thresholded, self.tasks[1:])) else None)
        plans = []
        for position, (task, sub) in enumerate(zip(self.tasks[1:], layer.subs), start=1):
            if sub.task_tau is None:
                planner.layer_paths.setdefault(task.name, {})[name] = "exact"
                plans.append(_Plan(position, "exact", inputs=x[position]))
                continue
            if task.granularity == "token":
                kept, mask = None, rms[position - 1] >= sub.task_tau
                rows = mask
            else:
                kept, mask = kernels.threshold_delta(delta[position - 1], sub.task_tau, task.granularity)
                rows = mask.any(dim=-1)
            measured.append((task.name, name, mask, rows))
            path = planner.choose(task, name, sub, x0.shape[0], x0.shape[-1], sub.weight.shape[0], temporal=False)
            if path == "dense":
                inputs = x0 + kept if kept is not None else torch.where(rows.unsqueeze(-1), x[position], x0)
                plans.append(_Plan(position, path, inputs=inputs))
            elif path == "token":  # whole changed rows equal x_t itself, partly changed ones do not
                index = rows.nonzero().squeeze(1)
                source = x[position] if kept is None else x0 + kept
                plans.append(_Plan(position, path, inputs=source.index_select(0, index), index=index))
            else:
                if kept is None:
                    kept = torch.where(rows.unsqueeze(-1), delta[position - 1], torch.zeros((), dtype=x.dtype,
                                                                                            device=x.device))
                plans.append(_Plan(position, path, kept=kept))
        return plans

    def _shared_linear(self, name: str, rows: int) -> _SharedLinear:
        """The layer's parts (built on first use: which deltas join the stacked product
        depends on the cost model, whose timings load on first need)."""
        layer = self._linears.get(name)
        if layer is None:
            subs = [task.layers[name] for task in self._planner.subs]
            members = [j for j, sub in enumerate(subs) if self._joins_product(sub, rows)]
            stacked = kernels.to_csr(torch.cat([_delta_with_bias(subs[j]) for j in members])) if members else None
            layer = self._linears[name] = _SharedLinear(base=self._planner.base.layers[name], subs=subs,
                                                        stacked=stacked, members=members)
        return layer

    def _joins_product(self, sub: TaskLayer, rows: int) -> bool:
        """Whether a sub-task's layer joins the stacked sparse product: it is thresholded,
        has a delta, and its ``dW`` (if any) is priced lower sparse than dense."""
        if sub.task_tau is None or (sub.dw is None and sub.db is None):
            return False
        in_features, out_features = sub.weight.shape[1], sub.weight.shape[0]
        return sub.dw is None or sub.structured is None and choose_weight_path(
            self._planner.timings_for(in_features, out_features), tokens=rows, in_features=in_features,
            out_features=out_features, weight_density=sub.weight_density) == "sparse"


def _delta_with_bias(sub: TaskLayer) -> Tensor:
    """``[dW_t | db_t]``, ``[out, in + 1]`` (zeros for a missing part): multiplied by a row
    ``[x, 1]`` it gives ``dW_t x + db_t``."""
    weight = sub.weight
    dw = torch.zeros_like(weight) if sub.dw is None else sub.dw
    db = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if sub.db is None else sub.db
    return torch.cat([dw, db.unsqueeze(1)], dim=1)


def _stacked_transposed(parts: Sequence[Tensor], ones: bool) -> Tensor:
    """The rows of ``parts`` (``[rows, C]`` each) stacked and transposed, ``[C, rows]``
    contiguous, with a last row of ones (``[C + 1, rows]``) if ``ones``."""
    width = parts[0].shape[-1]
    out = parts[0].new_empty(width + int(ones), sum(part.shape[0] for part in parts))
    torch.cat([part.t() for part in parts], dim=1, out=out[:width])
    if ones:
        out[width].fill_(1)
    return out


# --------------------------------------------------------------------------------------
# The parts between the linear layers, for every task at once.
# --------------------------------------------------------------------------------------
def attention_core(attn: Attention, qkv: Tensor) -> Tensor:
    """timm ``Attention`` between its two linear layers: ``[B, N, 3C]`` -> ``[B, N, C]``."""
    batch, tokens, _ = qkv.shape
    q, k, v = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if attn.fused_attn:
        h = F.scaled_dot_product_attention(q, k, v)
    else:
        h = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    return h.transpose(1, 2).reshape(batch, tokens, attn.attn_dim)


def _norm(params: StackedBlock, x: Tensor, which: int) -> Tensor:
    """Norm ``which`` (0: ``norm1``, 1: ``norm2``) of ``x [T, R, C]``, each task with its own parameters."""
    weight, bias = (params.norm1, params.norm2)[which]
    return torch.addcmul(bias.unsqueeze(1), unit_layer_norm(params, x, which), weight.unsqueeze(1))


def _residual(x: Tensor, gamma: Tensor | None, h: Tensor) -> Tensor:
    """``x + gamma * h`` in place (``x [T, R, C]`` is the stack's own residual stream),
    each task with its own LayerScale ``gamma [T, C]`` (``None``: identity)."""
    return x.add_(h) if gamma is None else x.addcmul_(h, gamma.unsqueeze(1))
