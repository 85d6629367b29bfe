"""Per network, not only per layer: whether the shared engine's stacked paths beat
plainly running each task's own model, for a given batch size.

The layer planner (:mod:`~mtlcompress.runtime.layer_plan`) picks each layer's cheapest
path, but the shared forward also pays for what no single layer sees: thresholding
every sub-task's inputs against the base task's, stacking, bookkeeping per task and
layer. On a small model or a device where calls are cheap next to that, T plain
forwards are faster, and the engine should be no slower than the models it replaces.

:func:`price_network` prices both sides from the calibrated kernel timings: every
linear layer (the layer planner's own prices for the shared side, one dense GEMM per
task for the other), attention and the heads at the dense GEMM rate (the same
multiply-adds on both sides; the shared side makes one call per part where the other
makes T, each at the dense path's cost per call), and the shared side's thresholding
and row bookkeeping per layer and sub-task at the token path's cost per call (the
same gathers, masks and scatters). :class:`NetworkChooser` takes the cheaper, and,
when asked to measure, replaces the prices by the engine's own wall-clock once it has
timed a call of each side at that batch size (the prices miss Python overheads that
matter on tiny models).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.cost_model import estimate_path_costs
from mtlcompress.runtime.layer_plan import LayerPlanner, weight_cost_density

__all__ = ["NETWORK_PATHS", "NetworkPlan", "NetworkChooser", "price_network"]

NETWORK_PATHS = ("auto", "shared", "per-task")

# Operator calls besides the linear layers, per block of one forward (two norms, the
# attention reshapes and kernel, GELU, two residual adds): about the same count for one
# task's block and for the stacked block of all tasks.
_CALLS_PER_BLOCK = 8
# The stacked forward's bookkeeping per thresholded shared layer (delta to the base
# input, per-row size, stacking the GEMM's rows) and per sub-task in it (mask, row
# gather and scatter, recorded density), in token-path calls (one is a gather, GEMM
# and scatter).
_THRESHOLD_CALLS_PER_LAYER = 1.0
_CALLS_PER_TASK_LAYER = 0.5
_SAMPLES_KEPT = 5  # measured calls per side and batch size a median is taken over


@dataclass(frozen=True)
class NetworkPlan:
    """How the engine runs a batch: ``path`` is ``"shared"`` or ``"per-task"``;
    ``shared_s`` and ``per_task_s`` the costs it compared (seconds per call; ``None``
    where nothing was compared); ``source`` what they are: ``"priced"`` (calibrated
    kernel timings), ``"measured"`` (this engine's own calls), ``"exploring"`` (the
    other side is being timed once) or ``"forced"`` (``network_path`` given)."""

    path: str
    shared_s: float | None
    per_task_s: float | None
    source: str
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


def price_network(planner: LayerPlanner, *, batch: int, tokens: int) -> dict[str, float]:
    """Estimated seconds of one forward of every task at ``batch`` images:
    ``{"shared": ..., "per-task": ...}`` (see the module docstring)."""
    tasks = [planner.base, *planner.subs]
    count = len(tasks)
    rows = batch * tokens
    shared = per_task = 0.0
    for name, base_layer in planner.base.layers.items():
        out_features, in_features = base_layer.weight.shape
        timings = planner.timings_for(in_features, out_features)
        call = timings.token.overhead_s
        one_gemm = timings.dense(rows * in_features * out_features)
        per_task += count * one_gemm
        shared += one_gemm  # the base task's GEMM (the sub-tasks' changed rows priced with their paths)
        thresholded = False
        for task in planner.subs:
            layer = task.layers[name]
            if layer.task_tau is None:
                shared += one_gemm
                continue
            thresholded = True
            costs = estimate_path_costs(
                timings, tokens=rows, in_features=in_features, out_features=out_features,
                token_density=planner.densities.get((task.name, name), task.initial_density),
                weight_density=weight_cost_density(layer), structured=layer.structured is not None,
                element_density=planner.densities.get((task.name, name + "#element")), stacked=True)
            shared += min(costs.values()) + _CALLS_PER_TASK_LAYER * call
        if thresholded:
            shared += _THRESHOLD_CALLS_PER_LAYER * call
    first = next(iter(planner.base.layers.values()))
    timings = planner.timings_for(first.weight.shape[1], first.weight.shape[0])
    width = first.weight.shape[1]
    attention = 2 * tokens * tokens * width  # q k^T and attention x v, per sequence
    blocks = len(planner.base.backbone.blocks)
    per_task += count * blocks * (timings.dense(batch * attention) + _CALLS_PER_BLOCK * timings.dense.overhead_s)
    shared += blocks * (timings.dense(count * batch * attention) + _CALLS_PER_BLOCK * timings.dense.overhead_s)
    heads = sum(timings.dense(batch * _head_macs(task, tokens)) for task in tasks)  # the same on both sides
    return {"shared": shared + heads, "per-task": per_task + heads}


def _head_macs(task, tokens: int) -> int:
    """A head's multiply-adds, roughly: every weight once per token position."""
    return tokens * sum(p.numel() for p in task.model.head.parameters() if p.dim() > 1)


class NetworkChooser:
    """Chooses a network path per batch size and remembers what calls measured.

    Args:
        mode: ``"auto"`` (the cheaper), ``"shared"`` or ``"per-task"`` (always).
        price: ``price(batch)`` -> ``{"shared": s, "per-task": s}`` (:func:`price_network`).
        measure: time calls (the engine reports them with :meth:`record`) and, once
            each side has a timed call after its first at a batch size, decide by
            their medians instead of the prices. Costs one or two calls of the slower
            side per batch size.
    """

    def __init__(self, mode: str, price: Callable[[int], dict[str, float]], measure: bool) -> None:
        if mode not in NETWORK_PATHS:
            raise MtlCompressError(f"unknown network path '{mode}'; choose from {', '.join(NETWORK_PATHS)}")
        self.mode = mode
        self.measure = measure
        self._price = price
        self._calls: dict[tuple[str, int], int] = {}
        self._samples: dict[tuple[str, int], list[float]] = {}

    def choose(self, batch: int) -> NetworkPlan:
        if self.mode != "auto":
            return NetworkPlan(self.mode, None, None, "forced", batch)
        priced = self._price(batch)
        cheaper = _cheaper(priced)
        if not self.measure:
            return NetworkPlan(cheaper, priced["shared"], priced["per-task"], "priced", batch)
        other = "per-task" if cheaper == "shared" else "shared"
        if not self._samples.get((cheaper, batch)):
            return NetworkPlan(cheaper, priced["shared"], priced["per-task"], "priced", batch)
        if not self._samples.get((other, batch)):
            return NetworkPlan(other, priced["shared"], priced["per-task"], "exploring", batch)
        measured = {path: statistics.median(self._samples[(path, batch)]) for path in ("shared", "per-task")}
        return NetworkPlan(_cheaper(measured), measured["shared"], measured["per-task"], "measured", batch)

    def record(self, path: str, batch: int, seconds: float) -> None:
        """One call's wall-clock; a side's first call at a batch size is not kept (it
        builds operands, calibrates kernels, warms caches)."""
        key = (path, batch)
        self._calls[key] = self._calls.get(key, 0) + 1
        if self.measure and self._calls[key] > 1:
            samples = self._samples.setdefault(key, [])
            samples.append(seconds)
            del samples[:-_SAMPLES_KEPT]


def _cheaper(costs: dict[str, float]) -> str:
    """``"per-task"`` only when it is cheaper (a tie keeps the shared paths)."""
    return "per-task" if costs["per-task"] < costs["shared"] * (1 - 1e-9) else "shared"
