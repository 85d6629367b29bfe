"""The shared engine: a bundle's tasks computed together, each sub-task only where it
differs from the base task (images) or from its previous frame (video).

It implements exactly the semantics of :class:`~mtlcompress.runtime.dense_engine.DenseEngine`
(read its docstring) but makes the savings real. The backbone runs block by block with
explicit calls to the timm modules' parts; every shared linear layer ``y = W x + b``
of a sub-task ``t`` is computed from the base task's input/output as

    y_t = y_0 + dW_t x_0 + W_t dx + db_t,    dx = threshold(x_t - x_0)

on one of three paths chosen per layer by the calibrated cost model
(:mod:`~mtlcompress.runtime.cost_model`) from the layer's last measured density:

* ``"token"``: the changed token rows join the base task's GEMM with the shared
  ``W_0``, the unchanged rows get ``y_0 + dW_t x_0 + db_t``, and one sparse CSR product
  of all sub-tasks' stacked ``dW_t`` covers both (:mod:`~mtlcompress.runtime.task_domain`);
* ``"element"``: ``y_0 + W_t dx`` with element-sparse ``dx`` plus the ``dW_t x_0`` term;
* ``"dense"``: the plain layer on ``x_0 + dx`` (nothing sparse enough to pay off).

Layers without a threshold run plainly (``"exact"``). Non-linear parts (LayerNorm,
softmax attention, GELU, residuals, heads) run densely on the reconstructed
activations, as timm would; on images every task's blocks run in lockstep, stacked,
each part once for all tasks. On video, a keyframe runs every task exactly; later
frames use the same identity in time, ``y^f = y^{f-1} + W dx`` with ``dx`` measured
against the last *propagated* input. At token granularity every frame runs row by row,
all such tasks in lockstep (:mod:`~mtlcompress.runtime.lockstep`): norms, GELU,
residuals and linear layers touch only the token rows that changed since the last
frame, and attention, the one part that mixes rows, is updated for the moved tokens
only (:mod:`~mtlcompress.runtime.incremental_attention`). Patch embeddings and heads
are updated where their inputs changed (:mod:`~mtlcompress.runtime.incremental_embed`,
:mod:`~mtlcompress.runtime.incremental_head`).

Above the layers, the engine chooses per network whether those shared paths beat
plainly running each task's own model (:mod:`~mtlcompress.runtime.network_plan`), and a
stream computes every frame in full once its delta frames measure dearer than its
keyframes (:mod:`~mtlcompress.runtime.stream_fallback`). The tasks' own models give
each task's exact output, as a keyframe does (no activation thresholds: they only
approximate to save compute).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.single_task import normalize_images
from mtlcompress.models.taps import layer_kind, shared_linear_names
from mtlcompress.runtime import kernels
from mtlcompress.runtime.cost_model import KernelTimings
from mtlcompress.runtime.devices import resolve_device
from mtlcompress.runtime.graphed_images import make_graphed_images
from mtlcompress.runtime.incremental_embed import PatchEmbedState, embed_tokens
from mtlcompress.runtime.incremental_head import HeadState
from mtlcompress.runtime.inputs import check_images, select_tasks
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.layer_plan import EngineTask, LayerPlanner, build_engine_task
from mtlcompress.runtime.lockstep import LockstepRows
from mtlcompress.runtime.network_plan import NetworkChooser, NetworkPlan, price_network
from mtlcompress.runtime.profiling import (NO_TIMER, PROFILE_KIND_OF_LAYER, PROFILE_KINDS, ROLE_ALL, ROLE_BASE,
                                           ROLE_SUB, SectionTimer, relative_drift)
from mtlcompress.runtime.head_features import feature_blocks, lockstep_levels, task_levels
from mtlcompress.runtime.results import DensityStats, FrameResult, record_measured
from mtlcompress.runtime.row_state import RowState
from mtlcompress.runtime.stream_fallback import StreamFallback
from mtlcompress.runtime.stream_state import StreamState, TaskStreamState
from mtlcompress.runtime.task_domain import TaskDomainRows, attention_core

__all__ = ["SharedEngine", "PROFILE_KINDS"]


Linear = Callable[[str, Tensor], Tensor]


class SharedEngine:
    """Real shared execution of a bundle (same interface and results as ``DenseEngine``).

    Args:
        bundle: the bundle to run.
        tasks: tasks to return (default: all); the base task always runs.
        device: where to run.
        timings: kernel timings for path choices, one set for every layer or one per
            layer shape ``(in, out)``; ``None`` loads (or calibrates and caches) this
            machine's per layer shape, on first need only.
        profile: record seconds per layer kind and role in ``profile_seconds`` (adds
            a synchronisation around each part; use for benchmarks, not production).
        network_path: ``"shared"`` (default) / ``"per-task"``: always that (streams: always
            reuse frames / every frame through the tasks' models); ``"auto"``: per batch
            size, whichever costs less; not the default, as the tasks' own models give exact
            (unthresholded) outputs, so its outputs would depend on the machine's timings.
        measure: let measured wall-clock decide (``network_plan``: once each side has
            run at a batch size; streams: delta against keyframes). Default: only
            when ``timings`` is ``None`` (given timings fix the prices).
        clock: seconds for those measurements (``time.perf_counter``).
        graphs: images by the static-shape path (:func:`~mtlcompress.runtime.graphed_images.make_graphed_images`):
            ``"off"`` (default), ``"auto"`` (CUDA graphs where possible) or ``"on"``.

    Attributes:
        stats: kept fraction of activation deltas, keyed like ``DenseEngine.stats``.
        layer_paths: last path per task and layer: ``"exact"``, ``"dense"``, ``"token"``,
            ``"element"`` or ``"static"`` (``graphs``) (``"base"`` for the base task);
            video non-keyframes under ``"<task>/temporal"``.
        network_plan: the last ``predict`` call's ``NetworkPlan`` (path and the costs
            it compared); ``None`` before the first.
        stream_plan: what streams measured and whether they compute every frame in
            full, and why (``StreamFallback.summary``).
    """

    name = "shared"

    def __init__(self, bundle: Bundle, tasks: Sequence[str] | None = None, device: str | torch.device = "cpu", *,
                 timings: KernelTimings | dict[tuple[int, int], KernelTimings] | None = None,
                 profile: bool = False, network_path: str = "shared", measure: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter, graphs: str = "off") -> None:
        self.bundle = bundle
        self.tasks = select_tasks(bundle, tasks)
        self.device = resolve_device(device)
        self.stats = DensityStats()
        self.profile = profile
        self.profile_seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        layer_names = shared_linear_names(bundle.backbone.depth)
        order = [bundle.base_task, *[t for t in self.tasks if t != bundle.base_task]]
        self._base = build_engine_task(bundle, bundle.base_task, layer_names, self.device)
        self._subs = [build_engine_task(bundle, t, layer_names, self.device) for t in order[1:]]
        self.planner = LayerPlanner(self._base, self._subs, timings, self.device, bundle.backbone.num_tokens)
        token_tasks = [t for t in [self._base, *self._subs] if t.granularity == "token"]
        self._lockstep = (LockstepRows(self.planner, token_tasks, lambda kind: self._timed(ROLE_ALL, kind))
                          if token_tasks else None)
        self._task_rows = TaskDomainRows(self.planner, lambda kind: self._timed(ROLE_ALL, kind))
        self._spare_rows: RowState | None = None  # a finished stream's rows, for the next one's first keyframe
        measure = timings is None if measure is None else measure
        self._clock = clock
        self._network = NetworkChooser(network_path, lambda batch: price_network(
            self.planner, batch=batch, tokens=bundle.backbone.num_tokens), measure)
        self._fallback = StreamFallback("per-task" if network_path == "per-task" else "auto",
                                        measure=measure and network_path == "auto")
        self.network_plan: NetworkPlan | None = None
        self.graphed = make_graphed_images(self.planner, bundle.backbone.num_tokens, graphs, self.device, self.stats)

    # ----------------------------------------------------------------------------------
    # Public API.
    # ----------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs ``{task: [B, C, H, W]}`` for images ``[B, 3, H, W]`` in [0, 1]."""
        images = images.to(self.device)
        check_images(images, self.bundle.backbone.img_size)
        plan = self.network_plan = self._network.choose(images.shape[0])
        start = self._clock()
        if plan.path == "per-task":
            outputs = self._per_task(images)
        else:  # the static path where on (None if it overflowed), else the task domain
            outputs = self.graphed.predict(images) if self.graphed is not None else None
            outputs = outputs or self._task_domain(images)
            outputs = {t: outputs[t].clone() for t in self.tasks}
        self._sync()
        self._network.record(plan.path, images.shape[0], self._clock() - start)
        return outputs

    def stream(self, frames: Iterable[torch.Tensor], policy: KeyframePolicy | None = None) -> Iterator[FrameResult]:
        """Process video frames ``[B, 3, H, W]`` in order, reusing the previous frame.

        A keyframe writes its state over the previous period's, and when the stream
        ends the engine keeps that memory (what the stream held while it ran) for its
        next stream's first keyframe: fresh memory costs page faults."""
        policy = policy or KeyframePolicy()
        stream: StreamState | None = None
        since_keyframe: int | None = None
        drift = 0.0
        try:
            for index, frame in enumerate(frames):
                frame = frame.to(self.device)
                check_images(frame, self.bundle.backbone.img_size)
                path = self._fallback.frame_path()  # None: frames reuse the previous one
                keyframe = path is not None or policy.is_keyframe(since_keyframe, drift)
                path = path or ("keyframe" if keyframe else "delta")
                start = self._clock()
                if path == "per-task":  # the stream state is not kept up to date: the next reuse needs a keyframe
                    outputs, drift, since_keyframe = self._per_task(frame), 0.0, None
                else:
                    if keyframe:
                        spare = stream.rows if stream is not None else self._spare_rows
                        self._spare_rows = None
                        stream = StreamState(tasks={task.name: TaskStreamState(refs={})
                                                for task in [self._base, *self._subs]}, spare=spare)
                        since_keyframe = 0
                    else:
                        since_keyframe += 1
                    outputs, drift = self._stream_frame(frame, stream, keyframe)
                    outputs = {t: outputs[t].clone() for t in self.tasks}
                self._sync()
                reason = self._fallback.record(path, self._clock() - start)
                yield FrameResult(index, keyframe, outputs, drift, path=path, reason=reason)
        finally:
            if stream is not None:
                self._spare_rows = stream.rows if stream.rows is not None else stream.spare

    def reset_profile(self) -> None:
        self.profile_seconds.clear()

    @property
    def timings(self) -> KernelTimings | dict[tuple[int, int], KernelTimings]:
        """Kernel timings: the ones given, or this machine's per layer shape ``(in, out)``
        (loaded or calibrated on first use, then cached on disk)."""
        return self.planner.timings

    @property
    def layer_paths(self) -> dict[str, dict[str, str]]:
        return self.planner.layer_paths

    @property
    def stream_plan(self) -> dict:
        return self._fallback.summary()

    # ----------------------------------------------------------------------------------
    # Each task's own model, plainly (exact: no activation thresholds).
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _per_task(self, images: Tensor) -> dict[str, Tensor]:
        models = {task.name: task.model for task in [self._base, *self._subs]}
        return {t: models[t](images) for t in self.tasks}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------------------------
    # Task domain: base exactly, sub-tasks as deltas from it.
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _task_domain(self, images: Tensor) -> dict[str, Tensor]:
        check_images(images, self.bundle.backbone.img_size)
        pixels = normalize_images(images, self.bundle.backbone)
        measured: list[tuple[str, str, Tensor, Tensor]] = []
        x0 = self._embed(self._base, pixels, ROLE_BASE)
        embeds = [x0, *(x0 if task.shares_embedding else self._embed(task, pixels, ROLE_SUB) for task in self._subs)]
        levels: dict[int, list[Tensor]] = dict.fromkeys(feature_blocks(self._task_rows.tasks))
        finals = self._task_rows.run(embeds, measured, levels)
        outputs = {task.name: self._head(task, x, ROLE_BASE if task is self._base else ROLE_SUB,
                                         levels=task_levels(levels, k))
                   for k, (task, x) in enumerate(zip(self._task_rows.tasks, finals)) if task.name in self.tasks}
        self._record(measured, temporal=False)
        return outputs

    # ----------------------------------------------------------------------------------
    # Temporal domain: every task against its own previous (propagated) frame.
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _stream_frame(self, frame: Tensor, stream: StreamState, keyframe: bool) -> tuple[dict[str, Tensor], float]:
        """One video frame: on a keyframe every task runs exactly and in full, and
        ``stream`` (new, empty) records what later frames start from; on other frames
        every task propagates what changed since the last one. Returns the outputs and
        the frame's drift."""
        pixels = normalize_images(frame, self.bundle.backbone)
        measured: list[tuple[str, str, Tensor, Tensor]] = []
        drifts: list[Tensor] = []
        outputs: dict[str, Tensor] = {}
        embeds: dict[str, Tensor] = {}
        x0 = self._embed(self._base, pixels, ROLE_BASE, stream.tasks[self._base.name])
        for task in [self._base, *self._subs]:
            role = ROLE_BASE if task is self._base else ROLE_SUB
            state = stream.tasks[task.name]
            x = x0 if task.shares_embedding or task is self._base else self._embed(task, pixels, role, state)
            if task.granularity == "token":  # below, with the other token tasks
                embeds[task.name] = x
                continue
            levels = {}
            for i in range(self.bundle.backbone.depth):
                x = self._block(task, i, x, lambda n, h, task=task, state=state, role=role:
                                self._temporal_linear(task, state.refs, measured, drifts, role, n, h, keyframe),
                                role)
                if i + 1 in task.model.feature_blocks:
                    levels[i + 1] = x
            if task.name in self.tasks:
                outputs[task.name] = self._head(task, x, role, state, levels)
        if self._lockstep is not None:
            lockstep = self._lockstep
            kept: list[tuple[str, Tensor]] = []
            inputs = [embeds[task.name] for task in lockstep.tasks]
            if keyframe:
                stream.rows, finals = lockstep.keyframe(inputs, recycle=stream.spare)
                stream.spare = None
                for name, paths in lockstep.paths().items():
                    self.layer_paths.setdefault(f"{name}/temporal", {}).update(paths)
            else:
                finals = lockstep.frame(stream.rows, inputs, kept, drifts)
            levels = lockstep_levels(stream.rows, feature_blocks(lockstep.tasks), len(lockstep.tasks), finals[0].shape)
            for k, (task, x) in enumerate(zip(lockstep.tasks, finals)):
                if task.name in self.tasks:
                    outputs[task.name] = self._head(task, x, ROLE_BASE if task is self._base else ROLE_SUB,
                                                    stream.tasks[task.name], task_levels(levels, k))
            self._record_lockstep(kept, stream.rows.rows_per_task)
        self._record(measured, temporal=True)
        return outputs, relative_drift(drifts)

    def _temporal_linear(self, task: EngineTask, refs: dict, measured: list, drifts: list, role: str,
                         name: str, x: Tensor, keyframe: bool) -> Tensor:
        """Element granularity: the delta identity in time on whole tensors (exact on a
        keyframe, which sets the references)."""
        layer = task.layers[name]
        key = f"{task.name}/temporal"
        with self._timed(role, PROFILE_KIND_OF_LAYER[layer_kind(name)]):
            if keyframe or layer.temporal_tau is None:
                if not keyframe:
                    self.layer_paths.setdefault(key, {})[name] = "exact"
                y = F.linear(x, layer.weight, layer.bias)
                refs[name] = (x, y)
                return y
            ref_in, ref_out = refs[name]
            kept, mask = kernels.threshold_delta(x - ref_in, layer.temporal_tau, task.granularity)
            propagated = ref_in + kept
            drifts.append(torch.linalg.vector_norm(x - propagated) / torch.linalg.vector_norm(x).clamp_min(1e-12))
            rows = mask.any(dim=-1)
            measured.append((key, name, mask, rows))
            path = self.planner.choose(task, name, None, rows.numel(), x.shape[-1], ref_out.shape[-1], temporal=True)
            if path == "dense":
                y = F.linear(propagated, layer.weight, layer.bias)
            elif path == "token":
                # The reference output is owned by this task's state alone: update it in place.
                changed = rows.reshape(-1).nonzero().squeeze(1)
                y = ref_out
                y.view(-1, y.shape[-1]).index_copy_(0, changed, F.linear(
                    propagated.reshape(-1, x.shape[-1]).index_select(0, changed), layer.weight, layer.bias))
            else:
                y = ref_out + kernels.element_sparse_linear(kept, layer.weight)
            refs[name] = (propagated, y)
            return y

    # ----------------------------------------------------------------------------------
    # The dense parts, exactly as timm runs them.
    # ----------------------------------------------------------------------------------
    def _embed(self, task: EngineTask, pixels: Tensor, role: str, state: TaskStreamState | None = None) -> Tensor:
        """timm's embedding; with a stream ``state``, kept there (at a keyframe) or
        updated from it (later frames) where the backbone allows."""
        with self._timed(role, "embed"):
            if state is not None and state.embed is not None:
                return state.embed.update(pixels)
            if state is not None and task.incremental_embed:
                state.embed = PatchEmbedState(task.backbone, pixels)
                return state.embed.tokens()
            return embed_tokens(task.backbone, pixels)

    def _block(self, task: EngineTask, index: int, x: Tensor, linear: Linear, role: str) -> Tensor:
        """timm ``Block.forward`` with each shared linear layer replaced by ``linear``."""
        block = task.backbone.blocks[index]
        prefix = f"blocks.{index}."
        with self._timed(role, "norm_act"):
            h1 = block.norm1(x)
        qkv = linear(prefix + "attn.qkv", h1)
        with self._timed(role, "attention"):
            attn = attention_core(block.attn, qkv)
        h = linear(prefix + "attn.proj", attn)
        with self._timed(role, "norm_act"):
            x_mid = x + block.ls1(h)
            h2 = block.norm2(x_mid)
        h = linear(prefix + "mlp.fc1", h2)
        with self._timed(role, "norm_act"):
            act = block.mlp.act(h)
        h = linear(prefix + "mlp.fc2", act)
        with self._timed(role, "norm_act"):
            x_out = x_mid + block.ls2(h)
        return x_out

    def _head(self, task: EngineTask, x: Tensor, role: str, state: TaskStreamState | None = None,
              levels: dict[int, Tensor] | None = None) -> Tensor:
        """Final norm and head on the last block's output ``x`` (and ``levels``, the
        other blocks' outputs a multi-level head reads); with a stream ``state``, kept
        there (at a keyframe) or updated from it (later frames) where the head allows."""
        prefix, grid = self.bundle.backbone.num_prefix_tokens, self.bundle.backbone.grid_size
        with self._timed(role, "head"):
            if state is not None and state.head is not None:
                return state.head.update(x)
            if state is not None and task.incremental_head:
                state.head = HeadState(task.backbone.norm, task.model.head, prefix, grid, x)
                return state.head.output
            return task.model.head_output({**(levels or {}), self.bundle.backbone.depth: x}, grid)

    # ----------------------------------------------------------------------------------
    # Path choice, statistics, profiling.
    # ----------------------------------------------------------------------------------
    def _record(self, measured: list[tuple[str, str, Tensor, Tensor]], temporal: bool) -> None:
        """Add kept fractions to ``stats`` and refresh the densities paths are chosen by (one sync)."""
        record_measured(self.stats, self.planner.densities, measured)

    def _record_lockstep(self, kept: list[tuple[str, Tensor]], rows_per_task: int) -> None:
        """``_record`` for the lockstep row path's temporal kept masks."""
        for name, fractions in self._lockstep.kept_fractions(kept, rows_per_task).items():
            key = f"{name}/temporal"
            self.stats.add(key, {layer: [value] for layer, value in fractions.items()})
            for layer, value in fractions.items():
                self.planner.densities[(key, layer)] = value

    def _timed(self, role: str, kind: str) -> contextlib.AbstractContextManager:
        return SectionTimer(self.profile_seconds[role], kind, self.device) if self.profile else NO_TIMER
