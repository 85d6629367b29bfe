"""Images with static shapes: every task's blocks stacked, as on the task-domain path
(:mod:`~mtlcompress.runtime.task_domain`), but with a FIXED number of gathered rows per
layer, so that the whole call, embedding to heads, has the same shapes and the same
kernels for every input and can be captured once as a CUDA graph and replayed
(:mod:`~mtlcompress.runtime.cuda_graphs`).

On a GPU at batch 1 the task-domain path is launch-bound: many small kernels, and a
host synchronisation per layer for its data-dependent row counts (``nonzero``). Here
nothing inside the call reads a tensor's value on the host: each thresholded sub-task
layer ranks its token rows by delta RMS (``topk``) and gathers a fixed ``capacity`` of
them; gathered rows below the threshold are written back unchanged (they contribute
exactly zero). If more rows pass the threshold than ``capacity`` holds, the result
would be inexact: the call also returns every layer's count of rows above threshold,
which the engine reads once after the call; on overflow it discards the outputs, runs
the exact task-domain path instead and re-captures with capacities from the new counts.
So results always follow the dense engine's semantics.

Every sub-task's changed rows join one GEMM with the base weight ``W_0`` (as on the
task-domain path); ``dW_t x + db_t`` runs as a dense GEMM (or the structured operand's
GEMMs for block and low-rank deltas): sparse CSR kernels allocate per call, which a
CUDA graph cannot hold. The cost model's per-layer path choice is not consulted: every
thresholded layer takes this one static path (``layer_paths``: ``"static"``).
Token granularity only (an element-sparse delta has no fixed shape).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mtlcompress.errors import MtlCompressError
from mtlcompress.models.single_task import normalize_images
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.runtime import kernels
from mtlcompress.runtime.cuda_graphs import CapturedCall, cuda_graphs_available
from mtlcompress.runtime.head_features import feature_blocks, task_levels
from mtlcompress.runtime.incremental_embed import embed_tokens
from mtlcompress.runtime.layer_plan import EngineTask, LayerPlanner, TaskLayer
from mtlcompress.runtime.results import DensityStats
from mtlcompress.runtime.stacked_blocks import StackedBlock, act_in_place, linear_into, stack_blocks, unit_layer_norm
from mtlcompress.runtime.task_domain import attention_core

__all__ = ["StaticImageRows", "GraphedImages", "make_graphed_images", "static_path_reason", "GRAPH_MODES",
           "DEFAULT_HEADROOM"]

GRAPH_MODES = ("off", "auto", "on")
DEFAULT_HEADROOM = 1.5  # capacity = this x the last measured count of rows above threshold


def static_path_reason(tasks: Sequence[EngineTask]) -> str:
    """Why the static path cannot run these tasks ("" when it can)."""
    element = [task.name for task in tasks if task.granularity != "token"
               and any(layer.task_tau is not None for layer in task.layers.values())]
    if element:
        return f"tasks {', '.join(element)} threshold element-wise deltas (the static path needs token granularity)"
    return ""


class StaticImageRows:
    """The static-shape image call for an engine's tasks (base first, then ``planner.subs``).

    Args:
        planner: the engine's layer planner (its tasks and measured densities, which
            capacities are sized from).
        num_tokens: tokens per image.
        headroom: capacity over the last measured density.

    ``forward(images, capacities)`` is the function to capture: it only launches
    kernels whose shapes follow from ``images.shape`` and ``capacities``.
    """

    def __init__(self, planner: LayerPlanner, num_tokens: int, headroom: float = DEFAULT_HEADROOM) -> None:
        self._planner = planner
        self.tasks = [planner.base, *planner.subs]
        self.num_tokens = num_tokens
        self.headroom = headroom
        blocks = [task.backbone.blocks for task in self.tasks]
        self._blocks = [stack_blocks([b[i] for b in blocks]) for i in range(len(blocks[0]))]
        names = shared_linear_names(len(self._blocks))
        # Thresholded layers: the ones a sub-task gathers rows for; their order is the
        # order of ``forward``'s counts.
        self.gathered = [name for name in names if any(t.layers[name].task_tau is not None for t in planner.subs)]
        self._dense_dw = {(k, name): _dense_delta(sub.layers[name]) for k, sub in enumerate(planner.subs)
                          for name in names}
        # Per thresholded layer, made once (a tensor made from host values inside a
        # captured call would be copied from memory the graph does not own): the
        # gathering sub-tasks, their positions in the stack and their thresholds.
        self._gathering: dict[str, tuple[list[int], Tensor, Tensor]] = {}
        for name in self.gathered:
            gather = [k for k, task in enumerate(planner.subs) if task.layers[name].task_tau is not None]
            device = planner.base.layers[name].weight.device
            self._gathering[name] = (gather, torch.tensor([k + 1 for k in gather], device=device),
                                     torch.tensor([planner.subs[k].layers[name].task_tau for k in gather],
                                                  dtype=torch.float32, device=device).unsqueeze(1))

    def capacities(self, batch: int) -> dict[str, int]:
        """Rows gathered per sub-task in each thresholded layer at this batch size:
        ``headroom`` times the largest last measured density over the sub-tasks that
        gather there, at least one row, at most every row."""
        rows = batch * self.num_tokens
        out = {}
        subs = self._planner.subs
        for name in self.gathered:
            density = max(self._planner.densities.get((subs[k].name, name), subs[k].initial_density)
                          for k in self._gathering[name][0])
            out[name] = max(1, min(rows, math.ceil(rows * density * self.headroom)))
        return out

    def forward(self, images: Tensor, capacities: dict[str, int]) -> tuple[dict[str, Tensor], Tensor]:
        """Every task's raw output for ``images [B, 3, H, W]``, and ``counts``
        ``[len(gathered), S]`` (int): rows above threshold per thresholded layer and
        sub-task (0 for a sub-task without a threshold there). Exact where no count
        exceeds its layer's capacity."""
        backbone = self.tasks[0].model.backbone_config
        pixels = normalize_images(images, backbone)
        x0 = embed_tokens(self.tasks[0].backbone, pixels)
        embeds = [x0, *(x0 if t.shares_embedding else embed_tokens(t.backbone, pixels) for t in self.tasks[1:])]
        batch, tokens, width = x0.shape
        x = torch.stack([e.reshape(batch * tokens, width) for e in embeds])
        wanted = feature_blocks(self.tasks)
        levels: dict[int, list[Tensor]] = {}
        counts: list[Tensor] = []
        for i, params in enumerate(self._blocks):
            prefix = f"blocks.{i}."
            h = _norm(params, x, 0)
            h = self._linear(prefix + "attn.qkv", h, capacities, counts)
            h = attention_core(params.attn, h.view(-1, tokens, h.shape[-1])).view(len(self.tasks), -1, width)
            h = self._linear(prefix + "attn.proj", h, capacities, counts)
            x = _residual(x, params.ls1, h)
            h = _norm(params, x, 1)
            h = self._linear(prefix + "mlp.fc1", h, capacities, counts)
            h = act_in_place(params.act, h)
            h = self._linear(prefix + "mlp.fc2", h, capacities, counts)
            x = _residual(x, params.ls2, h)
            if i + 1 in wanted:
                levels[i + 1] = list(x.clone().view(len(self.tasks), batch, tokens, width).unbind(0))
        finals = x.view(len(self.tasks), batch, tokens, width).unbind(0)
        grid = backbone.grid_size
        outputs = {task.name: task.model.head_output({**task_levels(levels, k), backbone.depth: final}, grid)
                   for k, (task, final) in enumerate(zip(self.tasks, finals))}
        empty = torch.zeros(0, len(self.tasks) - 1, dtype=torch.long, device=images.device)
        return outputs, torch.stack(counts) if counts else empty

    # ----------------------------------------------------------------------------------
    # One shared linear layer, every task, fixed shapes.
    # ----------------------------------------------------------------------------------
    def _linear(self, name: str, x: Tensor, capacities: dict[str, int], counts: list[Tensor]) -> Tensor:
        """Layer ``name`` of every task on ``x [T, R, in]`` -> ``[T, R, out]``; appends
        the layer's counts of rows above threshold (``[S]``) to ``counts`` if it gathers."""
        base = self._planner.base.layers[name]
        subs = [task.layers[name] for task in self._planner.subs]
        x0 = x[0]
        rows = x0.shape[0]
        gather: list[int] = []
        gathered = valid = index = None
        if name in self._gathering:
            gather, members, tau = self._gathering[name]
            own = x.index_select(0, members)  # [G, R, in]: the gathering sub-tasks' inputs
            rms = kernels.token_rms(own - x0)  # [G, R] fp32
            above = rms >= tau
            layer_counts = torch.zeros(len(subs), dtype=torch.long, device=x.device)
            counts.append(layer_counts.index_copy(0, members - 1, above.sum(dim=1)))
            # The largest RMS first: every row above threshold, if they fit; the others
            # among the gathered rows are written back unchanged below.
            score, index = rms.topk(capacities[name], dim=1, sorted=False)
            valid = score >= tau  # [G, K]
            gathered = own.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        inputs = x0 if gathered is None else torch.cat([x0, gathered.reshape(-1, x.shape[-1])])
        width = base.weight.shape[0]
        base_out = linear_into(inputs, base.weight, base.bias, None)  # W_0 x + b_0 on base and gathered rows
        y = x.new_empty(x.shape[0], rows, width)
        y[0] = base_out[:rows]
        for k, sub in enumerate(subs):
            out = y[k + 1]
            if sub.task_tau is None:  # no threshold: the sub-task's own layer on its own input
                linear_into(x[k + 1], sub.weight, sub.bias, out)
                continue
            g = gather.index(k)
            self._add_delta(k, name, sub, out.copy_(base_out[:rows]), x0)  # y_0 + dW_t x_0 + db_t
            capacity = index.shape[1]
            changed = base_out[rows + g * capacity:rows + (g + 1) * capacity]
            self._add_delta(k, name, sub, changed, gathered[g])  # W_t x_t + b_t on the gathered rows
            kept = torch.where(valid[g].unsqueeze(1), changed, out.index_select(0, index[g]))
            out.index_copy_(0, index[g], kept)
        return y

    def _add_delta(self, k: int, name: str, sub: TaskLayer, out: Tensor, x: Tensor) -> None:
        """``out += dW_t x + db_t`` with the dense (or structured) ``dW``."""
        dw = self._dense_dw[(k, name)]
        if dw is not None:
            kernels.add_delta_weight_matmul_(out, x, dw)
        if sub.db is not None:
            out += sub.db


def _dense_delta(layer: TaskLayer):
    """The ``dW`` operand a static call can hold: the structured one, else the dense tensor."""
    return layer.structured if layer.structured is not None else layer.dw


def _norm(params: StackedBlock, x: Tensor, which: int) -> Tensor:
    """Norm ``which`` of ``x [T, R, C]``, each task with its own parameters."""
    weight, bias = (params.norm1, params.norm2)[which]
    return torch.addcmul(bias.unsqueeze(1), unit_layer_norm(params, x, which), weight.unsqueeze(1))


def _residual(x: Tensor, gamma: Tensor | None, h: Tensor) -> Tensor:
    """``x + gamma * h`` in place, each task with its own LayerScale."""
    return x.add_(h) if gamma is None else x.addcmul_(h, gamma.unsqueeze(1))



class GraphedImages:
    """The engine's static image calls, one per batch size: captured as a CUDA graph on
    a CUDA device (``capture``), run eagerly elsewhere (how CPU tests check them).

    ``predict`` returns ``None`` when a layer had more rows above threshold than its
    capacity: the engine then runs the exact path, whose measured densities size the
    next capture (the overflowed one is dropped).

    Attributes:
        overflows: calls that overflowed (and were re-run on the exact path).
        capacities: the capacities each batch size's call was built with.
    """

    def __init__(self, rows: StaticImageRows, planner: LayerPlanner, stats: DensityStats, capture: bool) -> None:
        self.rows = rows
        self.capture = capture
        self.overflows = 0
        self.capacities: dict[int, dict[str, int]] = {}
        self._planner = planner
        self._stats = stats
        self._calls: dict[int, Callable[[Tensor], tuple[dict[str, Tensor], Tensor]]] = {}

    def predict(self, images: Tensor) -> dict[str, Tensor] | None:
        """Every task's output for ``images`` (the call's own tensors, overwritten by the
        next call: copy what you keep), or ``None`` on overflow."""
        batch = images.shape[0]
        call = self._calls.get(batch)
        if call is None:
            capacities = self.capacities[batch] = self.rows.capacities(batch)
            function = functools.partial(self.rows.forward, capacities=capacities)
            call = self._calls[batch] = CapturedCall(function, images) if self.capture else torch.no_grad()(function)
        outputs, counts = call(images)
        counts = counts.tolist()  # the one host read per call
        capacities = self.capacities[batch]
        if any(count > capacities[name] for name, row in zip(self.rows.gathered, counts) for count in row):
            del self._calls[batch]
            self.overflows += 1
            return None
        self._record(counts, batch * self.rows.num_tokens)
        return outputs

    def _record(self, counts: list[list[int]], rows: int) -> None:
        """Kept fractions into the engine's ``stats``, densities and ``layer_paths``."""
        planner = self._planner
        for name, row in zip(self.rows.gathered, counts):
            for task, count in zip(planner.subs, row):
                if task.layers[name].task_tau is None:
                    planner.layer_paths.setdefault(task.name, {})[name] = "exact"
                    continue
                planner.layer_paths.setdefault(task.name, {})[name] = "static"
                planner.densities[(task.name, name)] = count / rows
                self._stats.add(task.name, {name: [count / rows]})


def make_graphed_images(planner: LayerPlanner, num_tokens: int, graphs: str, device: torch.device,
                        stats: DensityStats) -> GraphedImages | None:
    """The engine's static image path for ``graphs`` (``SharedEngine``'s option):
    ``"off"``: none; ``"auto"``: captured CUDA graphs on a CUDA device where the tasks
    allow, else none; ``"on"``: the static path on any device (captured on CUDA, eager
    elsewhere), an error where the tasks do not allow it."""
    if graphs not in GRAPH_MODES:
        raise MtlCompressError(f"unknown graphs mode '{graphs}'; choose from {', '.join(GRAPH_MODES)}")
    capture = cuda_graphs_available(device)
    reason = static_path_reason([planner.base, *planner.subs])
    if graphs == "off" or (graphs == "auto" and (reason or not capture)):
        return None
    if reason:
        raise MtlCompressError(f"graphs='on': {reason}")
    return GraphedImages(StaticImageRows(planner, num_tokens), planner, stats, capture)
