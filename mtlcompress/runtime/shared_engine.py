"""The shared engine: a bundle's tasks computed together, each sub-task only where it
differs from the base task (images) or from its previous frame (video).

It implements exactly the semantics of :class:`~mtlcompress.runtime.dense_engine.DenseEngine`
(read its docstring) but makes the savings real. The backbone runs block by block with
explicit calls to the timm modules' parts; every shared linear layer ``y = W x + b``
of a sub-task ``t`` is computed from the base task's cached input/output as

    y_t = y_0 + dW_t x_0 + W_t dx + db_t,    dx = threshold(x_t - x_0)

on one of three paths chosen per layer by the calibrated cost model
(:mod:`~mtlcompress.runtime.cost_model`) from the layer's last measured density:

* ``"token"``: changed token rows run one GEMM on ``x_0 + dx``; the unchanged rows get
  ``y_0 + dW_t x_0 + db_t`` with a sparse CSR ``dW_t`` (skipped when the delta is 0);
* ``"element"``: ``y_0 + W_t dx`` with element-sparse ``dx`` plus the ``dW_t x_0`` term;
* ``"dense"``: the plain layer on ``x_0 + dx`` (nothing sparse enough to pay off).

Layers without a threshold run plainly (``"exact"``). Non-linear parts (LayerNorm,
softmax attention, GELU, residuals, heads) run densely on the reconstructed
activations, as timm would. On video, non-keyframes use the same identity in time,
``y^f = y^{f-1} + W dx`` with ``dx`` measured against the last *propagated* input.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import Tensor

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.models.single_task import SingleTaskModel, normalize_images
from mtlcompress.models.taps import layer_kind, shared_linear_names
from mtlcompress.runtime import kernels
from mtlcompress.runtime.cost_model import KernelTimings, choose_path, choose_weight_path, load_or_calibrate
from mtlcompress.runtime.dense_engine import DensityStats, FrameResult, check_images, select_tasks
from mtlcompress.runtime.keyframes import KeyframePolicy

__all__ = ["SharedEngine", "PROFILE_KINDS"]

# Short names for the timing breakdown; the linear kinds follow ``models.taps``.
_KIND = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
PROFILE_KINDS = ("embed", "qkv", "attention", "proj", "fc1", "fc2", "norm_act", "head")
_BASE, _SUB = "base", "sub-tasks"
# Parameters outside the blocks that shape the tokens entering block 0.
_EMBED_PREFIXES = ("patch_embed.", "cls_token", "reg_token", "pos_embed", "norm_pre.")
_DEFAULT_DENSITY = 0.3  # path-choice guess before a layer's density has been measured

Linear = Callable[[str, Tensor], Tensor]


@dataclass
class _Layer:
    """One task's shared linear layer and everything its delta paths need."""

    weight: Tensor
    bias: Tensor | None
    dw: Tensor | None          # dense dW_t (None: unchanged weights)
    dw_sparse: Tensor | None   # the same as sparse CSR, built once
    db: Tensor | None
    weight_density: float
    task_tau: float | None
    temporal_tau: float | None


@dataclass
class _Task:
    name: str
    model: SingleTaskModel
    layers: dict[str, _Layer]
    granularity: str
    shares_embedding: bool
    initial_density: float

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone


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

    Attributes:
        stats: kept fraction of activation deltas, keyed like ``DenseEngine.stats``.
        layer_paths: last path per task and layer: ``"exact"``, ``"dense"``,
            ``"token"`` or ``"element"`` (``"base"`` for the base task); video
            non-keyframes under ``"<task>/temporal"``.
    """

    name = "shared"

    def __init__(self, bundle: Bundle, tasks: Sequence[str] | None = None, device: str | torch.device = "cpu", *,
                 timings: KernelTimings | dict[tuple[int, int], KernelTimings] | None = None,
                 profile: bool = False) -> None:
        self.bundle = bundle
        self.tasks = select_tasks(bundle, tasks)
        self.device = torch.device(device)
        self.stats = DensityStats()
        self.layer_paths: dict[str, dict[str, str]] = {}
        self.profile = profile
        self.profile_seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._timings = timings
        self._density: dict[tuple[str, str], float] = {}
        self._layer_names = shared_linear_names(bundle.backbone.depth)
        order = [bundle.base_task, *[t for t in self.tasks if t != bundle.base_task]]
        self._base = self._build_task(bundle.base_task)
        self._subs = [self._build_task(t) for t in order[1:]]

    # ----------------------------------------------------------------------------------
    # Public API.
    # ----------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs ``{task: [B, C, H, W]}`` for images ``[B, 3, H, W]`` in [0, 1]."""
        outputs, _ = self._task_domain(images.to(self.device), keep_refs=False)
        return {t: outputs[t].clone() for t in self.tasks}

    def stream(self, frames: Iterable[torch.Tensor], policy: KeyframePolicy | None = None) -> Iterator[FrameResult]:
        """Process video frames ``[B, 3, H, W]`` in order, reusing the previous frame."""
        policy = policy or KeyframePolicy()
        refs: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
        since_keyframe: int | None = None
        drift = 0.0
        for index, frame in enumerate(frames):
            frame = frame.to(self.device)
            if policy.is_keyframe(since_keyframe, drift):
                outputs, refs = self._task_domain(frame, keep_refs=True)
                since_keyframe, drift = 0, 0.0
                yield FrameResult(index, True, {t: outputs[t].clone() for t in self.tasks})
                continue
            check_images(frame, self.bundle.backbone.img_size)
            since_keyframe += 1
            outputs, drift = self._temporal_frame(frame, refs)
            yield FrameResult(index, False, {t: outputs[t].clone() for t in self.tasks}, drift)

    def reset_profile(self) -> None:
        self.profile_seconds.clear()

    # ----------------------------------------------------------------------------------
    # Construction.
    # ----------------------------------------------------------------------------------
    def _build_task(self, name: str) -> _Task:
        entry = self.bundle.task(name)
        model = self.bundle.task_model(name).to(self.device)
        _check_supported(model.backbone)
        modules = dict(model.backbone.named_modules())
        activation = entry.activation
        layers = {}
        for layer in self._layer_names:
            linear = modules[layer]
            dw = entry.delta.get(f"{layer}.weight")
            dw = None if dw is None or not bool(dw.ne(0).any()) else dw.to(self.device)
            db = entry.delta.get(f"{layer}.bias")
            db = None if db is None or not bool(db.ne(0).any()) else db.to(self.device)
            layers[layer] = _Layer(
                weight=linear.weight, bias=linear.bias, dw=dw,
                dw_sparse=None if dw is None else _to_csr(dw), db=db,
                weight_density=0.0 if dw is None else float(dw.ne(0).float().mean()),
                task_tau=activation.task_thresholds.get(layer) if name != self.bundle.base_task else None,
                temporal_tau=activation.temporal_thresholds.get(layer))
        density = entry.provenance.get("sparsity", {}).get("activation_density")
        valid = isinstance(density, (int, float)) and 0.0 <= density <= 1.0
        return _Task(name=name, model=model, layers=layers, granularity=activation.granularity,
                     shares_embedding=not any(k.startswith(_EMBED_PREFIXES) for k in entry.delta),
                     initial_density=float(density) if valid else _DEFAULT_DENSITY)

    @property
    def timings(self) -> KernelTimings | dict[tuple[int, int], KernelTimings]:
        """Kernel timings: the ones given, or this machine's per layer shape ``(in, out)``
        (loaded or calibrated on first use, then cached on disk)."""
        if self._timings is None:
            tokens = self.bundle.backbone.grid_size ** 2 + self.bundle.backbone.num_prefix_tokens
            shapes = {(layer.weight.shape[1], layer.weight.shape[0])
                      for task in self._subs for layer in task.layers.values()}
            self._timings = {shape: load_or_calibrate(self.device, in_features=shape[0], out_features=shape[1],
                                                      tokens=tokens) for shape in sorted(shapes)}
        return self._timings

    def _timings_for(self, in_features: int, out_features: int) -> KernelTimings:
        timings = self.timings
        if isinstance(timings, KernelTimings):
            return timings
        return timings.get((in_features, out_features)) or next(iter(timings.values()))

    # ----------------------------------------------------------------------------------
    # Task domain: base exactly, sub-tasks as deltas from it.
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _task_domain(self, images: Tensor, keep_refs: bool
                     ) -> tuple[dict[str, Tensor], dict[str, dict[str, tuple[Tensor, Tensor]]]]:
        check_images(images, self.bundle.backbone.img_size)
        pixels = normalize_images(images)
        refs: dict[str, dict[str, tuple[Tensor, Tensor]]] = {t.name: {} for t in [self._base, *self._subs]}
        measured: list[tuple[str, str, Tensor, Tensor]] = []
        x0 = self._embed(self._base, pixels, _BASE)
        xs = [x0 if task.shares_embedding else self._embed(task, pixels, _SUB) for task in self._subs]
        for i in range(self.bundle.backbone.depth):
            cache: dict[str, tuple[Tensor, Tensor]] = {}
            base_refs = refs[self._base.name] if keep_refs else None
            x0 = self._block(self._base, i, x0, lambda n, x: self._base_linear(cache, base_refs, n, x), _BASE)
            for j, task in enumerate(self._subs):
                task_refs = refs[task.name] if keep_refs else None
                xs[j] = self._block(task, i, xs[j], lambda n, x, task=task, task_refs=task_refs:
                                    self._sub_linear(task, cache, task_refs, measured, n, x), _SUB)
        outputs = {task.name: self._head(task, x, _SUB) for task, x in zip(self._subs, xs)}
        if self._base.name in self.tasks:
            outputs[self._base.name] = self._head(self._base, x0, _BASE)
        self._record(measured, temporal=False)
        return outputs, refs

    def _base_linear(self, cache: dict, refs: dict | None, name: str, x: Tensor) -> Tensor:
        layer = self._base.layers[name]
        with self._timed(_BASE, _KIND[layer_kind(name)]):
            y = F.linear(x, layer.weight, layer.bias)
        cache[name] = (x, y)
        if refs is not None:
            refs[name] = (x, y)
        return y

    def _sub_linear(self, task: _Task, cache: dict, refs: dict | None, measured: list, name: str, x: Tensor) -> Tensor:
        layer = task.layers[name]
        with self._timed(_SUB, _KIND[layer_kind(name)]):
            if layer.task_tau is None:
                self.layer_paths.setdefault(task.name, {})[name] = "exact"
                y = F.linear(x, layer.weight, layer.bias)
                if refs is not None:
                    refs[name] = (x, y)
                return y
            x0, y0 = cache[name]
            kept, mask = kernels.threshold_delta(x - x0, layer.task_tau, task.granularity)
            rows = mask if task.granularity == "token" else mask.any(dim=-1)
            measured.append((task.name, name, mask, rows))
            path = self._choose(task, name, layer, rows.numel(), x.shape[-1], y0.shape[-1], temporal=False)
            element = task.granularity == "element"
            propagated = x0 + kept if (refs is not None or path == "dense" or element) else None
            if path == "dense":
                y = F.linear(propagated, layer.weight, layer.bias)
            elif path == "token":  # whole changed rows equal x_t itself, partly changed ones do not
                y = self._token_delta(layer, propagated if element else x, x0, y0, rows)
            else:
                y = y0 + kernels.element_sparse_linear(kept, layer.weight)
                y = self._add_weight_delta(y, layer, x0)
            if refs is not None:
                refs[name] = (propagated, y)
            return y

    def _token_delta(self, layer: _Layer, x: Tensor, x0: Tensor, y0: Tensor, rows: Tensor) -> Tensor:
        """Changed rows: one GEMM on ``x`` (= ``x_0 + dx`` there); unchanged rows: ``y_0 + dW x_0 + db``."""
        flat = rows.reshape(-1)
        x0_rows = x0.reshape(-1, x0.shape[-1])
        y = (y0 + layer.db) if layer.db is not None else y0.clone()
        y_rows = y.view(-1, y.shape[-1])
        if layer.dw is not None:
            unchanged = (~flat).nonzero().squeeze(1)
            update = self._weight_delta(layer, x0_rows.index_select(0, unchanged))
            y_rows.index_add_(0, unchanged, update.contiguous())  # CSR results come transposed
        changed = flat.nonzero().squeeze(1)
        inputs = x.reshape(-1, x.shape[-1]).index_select(0, changed)
        y_rows.index_copy_(0, changed, F.linear(inputs, layer.weight, layer.bias))
        return y

    def _add_weight_delta(self, y: Tensor, layer: _Layer, x0: Tensor) -> Tensor:
        if layer.dw is not None:
            y = y + self._weight_delta(layer, x0)
        return y + layer.db if layer.db is not None else y

    def _weight_delta(self, layer: _Layer, x0: Tensor) -> Tensor:
        """``x_0 dW^T`` on the kernel the cost model prices lower."""
        rows = x0.numel() // max(1, x0.shape[-1])
        path = choose_weight_path(self._timings_for(layer.weight.shape[1], layer.weight.shape[0]),
                                  tokens=max(1, rows), in_features=layer.weight.shape[1],
                                  out_features=layer.weight.shape[0], weight_density=layer.weight_density)
        return kernels.delta_weight_matmul(x0, layer.dw_sparse if path == "sparse" else layer.dw)

    # ----------------------------------------------------------------------------------
    # Temporal domain: every task against its own previous (propagated) frame.
    # ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _temporal_frame(self, frame: Tensor, refs: dict[str, dict[str, tuple[Tensor, Tensor]]]
                        ) -> tuple[dict[str, Tensor], float]:
        pixels = normalize_images(frame)
        measured: list[tuple[str, str, Tensor, Tensor]] = []
        drifts: list[Tensor] = []
        outputs: dict[str, Tensor] = {}
        x0 = self._embed(self._base, pixels, _BASE)
        for task in [self._base, *self._subs]:
            role = _BASE if task is self._base else _SUB
            x = x0 if task.shares_embedding else self._embed(task, pixels, role)
            task_refs = refs[task.name]
            for i in range(self.bundle.backbone.depth):
                x = self._block(task, i, x, lambda n, h, task=task, task_refs=task_refs, role=role:
                                self._temporal_linear(task, task_refs, measured, drifts, role, n, h), role)
            if task.name in self.tasks:
                outputs[task.name] = self._head(task, x, role)
        self._record(measured, temporal=True)
        drift = float(torch.stack(drifts).max()) if drifts else 0.0
        return outputs, drift

    def _temporal_linear(self, task: _Task, refs: dict, measured: list, drifts: list, role: str,
                         name: str, x: Tensor) -> Tensor:
        layer = task.layers[name]
        key = f"{task.name}/temporal"
        with self._timed(role, _KIND[layer_kind(name)]):
            if layer.temporal_tau is None:
                self.layer_paths.setdefault(key, {})[name] = "exact"
                y = F.linear(x, layer.weight, layer.bias)
                refs[name] = (x, y)
                return y
            ref_in, ref_out = refs[name]
            kept, mask = kernels.threshold_delta(x - ref_in, layer.temporal_tau, task.granularity)
            propagated = ref_in + kept
            drifts.append(torch.linalg.vector_norm(x - propagated) / torch.linalg.vector_norm(x).clamp_min(1e-12))
            rows = mask if task.granularity == "token" else mask.any(dim=-1)
            measured.append((key, name, mask, rows))
            path = self._choose(task, name, None, rows.numel(), x.shape[-1], ref_out.shape[-1], temporal=True)
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
    def _embed(self, task: _Task, pixels: Tensor, role: str) -> Tensor:
        backbone = task.backbone
        with self._timed(role, "embed"):
            x = backbone._pos_embed(backbone.patch_embed(pixels))
            return backbone.norm_pre(backbone.patch_drop(x))

    def _block(self, task: _Task, index: int, x: Tensor, linear: Linear, role: str) -> Tensor:
        """timm ``Block.forward`` with each shared linear layer replaced by ``linear``."""
        block = task.backbone.blocks[index]
        attn = block.attn
        prefix = f"blocks.{index}."
        with self._timed(role, "norm_act"):
            h = block.norm1(x)
        qkv = linear(prefix + "attn.qkv", h)
        with self._timed(role, "attention"):
            batch, tokens, _ = qkv.shape
            q, k, v = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            if attn.fused_attn:
                h = F.scaled_dot_product_attention(q, k, v)
            else:
                h = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
            h = h.transpose(1, 2).reshape(batch, tokens, attn.attn_dim)
        h = linear(prefix + "attn.proj", h)
        with self._timed(role, "norm_act"):
            x = x + block.ls1(h)
            h = block.norm2(x)
        h = linear(prefix + "mlp.fc1", h)
        with self._timed(role, "norm_act"):
            h = block.mlp.act(h)
        h = linear(prefix + "mlp.fc2", h)
        with self._timed(role, "norm_act"):
            return x + block.ls2(h)

    def _head(self, task: _Task, x: Tensor, role: str) -> Tensor:
        with self._timed(role, "head"):
            tokens = task.backbone.norm(x)[:, self.bundle.backbone.num_prefix_tokens:]
            return task.model.head(tokens, self.bundle.backbone.grid_size)

    # ----------------------------------------------------------------------------------
    # Path choice, statistics, profiling.
    # ----------------------------------------------------------------------------------
    def _choose(self, task: _Task, name: str, layer: _Layer | None, tokens: int, in_features: int,
                out_features: int, temporal: bool) -> str:
        key = f"{task.name}/temporal" if temporal else task.name
        density = self._density.get((key, name), task.initial_density)
        path = choose_path(self._timings_for(in_features, out_features), tokens=tokens, in_features=in_features,
                           out_features=out_features,
                           token_density=density, weight_density=0.0 if layer is None else layer.weight_density,
                           element_density=self._density.get((key, name + "#element")))
        self.layer_paths.setdefault(key, {})[name] = path
        return path

    def _record(self, measured: list[tuple[str, str, Tensor, Tensor]], temporal: bool) -> None:
        """Add kept fractions to ``stats`` and refresh the densities paths are chosen by (one sync)."""
        if not measured:
            return
        element = measured[0][2].dim() != measured[0][3].dim()
        fractions = [m.float().mean() for _, _, m, _ in measured]
        if element:  # the token paths are priced by the rows with any kept entry
            fractions += [r.float().mean() for _, _, _, r in measured]
        values = torch.stack(fractions).tolist()
        per_task: dict[str, dict[str, list[float]]] = {}
        for i, (key, name, _, _) in enumerate(measured):
            per_task.setdefault(key, {}).setdefault(name, []).append(values[i])
            self._density[(key, name)] = values[len(measured) + i] if element else values[i]
            if element:
                self._density[(key, name + "#element")] = values[i]
        for key, layer_stats in per_task.items():
            self.stats.add(key, layer_stats)

    def _timed(self, role: str, kind: str) -> contextlib.AbstractContextManager:
        return _Timer(self, role, kind) if self.profile else _NO_TIMER


class _Timer:
    def __init__(self, engine: SharedEngine, role: str, kind: str) -> None:
        self.engine, self.role, self.kind = engine, role, kind

    def _sync(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)

    def __enter__(self) -> None:
        self._sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.engine.profile_seconds[self.role][self.kind] += time.perf_counter() - self.start


_NO_TIMER = contextlib.nullcontext()


def _to_csr(dense: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return dense.to_sparse_csr()


def _check_supported(backbone: nn.Module) -> None:
    """The block re-implementation covers plain pre-norm timm ViT blocks only."""
    for index, block in enumerate(backbone.blocks):
        attn, mlp = block.attn, block.mlp
        plain = (type(block) is Block and type(attn) is Attention and type(mlp) is Mlp
                 and all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm))
                 and getattr(attn, "gate", None) is None)
        if not plain:
            raise MtlCompressError(f"block {index} is not a plain timm ViT block (qk-norm, gated attention or a "
                                   "custom MLP); the shared engine cannot run it; use --engine dense")
