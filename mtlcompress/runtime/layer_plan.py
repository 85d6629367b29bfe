"""What the shared engine's executors need to run each shared linear layer: every
task's layer (weights, weight delta, thresholds), and one ``LayerPlanner`` that
chooses the layer's path, holds the kernel timings it is priced by, and hands out the
``dW`` operand. The engine builds them once and passes the planner to the stacked-row
executors (:mod:`~mtlcompress.runtime.task_domain`, :mod:`~mtlcompress.runtime.lockstep`),
which need nothing else from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import Tensor

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.models.single_task import SingleTaskModel
from mtlcompress.runtime import kernels
from mtlcompress.runtime.cost_model import KernelTimings, choose_path, choose_weight_path
from mtlcompress.runtime.calibration import load_or_calibrate
from mtlcompress.runtime.incremental_embed import supports_incremental_embed
from mtlcompress.runtime.incremental_head import supports_incremental_head
from mtlcompress.runtime.structured_kernels import StructuredDelta, structured_operand

# Parameters outside the blocks that shape the tokens entering block 0.
_EMBED_PREFIXES = ("patch_embed.", "cls_token", "reg_token", "pos_embed", "norm_pre.")
_DEFAULT_DENSITY = 0.3  # path-choice guess before a layer's density has been measured


@dataclass
class TaskLayer:
    """One task's shared linear layer and everything its delta paths need."""

    weight: Tensor
    bias: Tensor | None
    dw: Tensor | None          # dense dW_t (None: unchanged weights)
    dw_sparse: Tensor | None   # the same as sparse CSR, built once (None when structured)
    db: Tensor | None
    weight_density: float
    task_tau: float | None
    temporal_tau: float | None
    # dW as whole blocks or thin factors (bundle layouts block<h>x<w>, lowrank): its
    # product always runs as dense GEMMs on them.
    structured: StructuredDelta | None = None
    # The ``dW`` operand the cost model picks, by row count: filled on use, as video
    # frames ask again for the same few row counts in every layer and frame.
    operand_by_rows: dict[int, Tensor] = field(default_factory=dict)


@dataclass
class EngineTask:
    """One task as the shared engine runs it: its dense model and its shared layers."""

    name: str
    model: SingleTaskModel
    layers: dict[str, TaskLayer]
    granularity: str
    shares_embedding: bool
    initial_density: float
    incremental_embed: bool  # video frames re-embed changed patches only
    incremental_head: bool   # video frames recompute the head where tokens changed only

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone


def build_engine_task(bundle: Bundle, name: str, layer_names: list[str], device) -> EngineTask:
    """The task's dense model on ``device`` and its shared layers' delta operands."""
    entry = bundle.task(name)
    model = bundle.task_model(name).to(device, bundle.dtype)  # computes in the bundle's dtype
    check_supported(model.backbone)
    modules = dict(model.backbone.named_modules())
    activation = entry.activation
    layers = {}
    for layer in layer_names:
        linear = modules[layer]
        dw = entry.delta.get(f"{layer}.weight")
        dw = None if dw is None or not bool(dw.ne(0).any()) else dw.to(device)
        db = entry.delta.get(f"{layer}.bias")
        db = None if db is None or not bool(db.ne(0).any()) else db.to(device)
        structured = None if dw is None else structured_operand(dw)
        layers[layer] = TaskLayer(
            weight=linear.weight, bias=linear.bias, dw=dw, structured=structured,
            dw_sparse=None if dw is None or structured is not None else kernels.to_csr(dw), db=db,
            weight_density=0.0 if dw is None else float(dw.ne(0).float().mean()),
            task_tau=activation.task_thresholds.get(layer) if name != bundle.base_task else None,
            temporal_tau=activation.temporal_thresholds.get(layer))
    density = entry.provenance.get("sparsity", {}).get("activation_density")
    valid = isinstance(density, (int, float)) and 0.0 <= density <= 1.0
    return EngineTask(name=name, model=model, layers=layers, granularity=activation.granularity,
                      shares_embedding=not any(k.startswith(_EMBED_PREFIXES) for k in entry.delta),
                      initial_density=float(density) if valid else _DEFAULT_DENSITY,
                      incremental_embed=supports_incremental_embed(model.backbone),
                      incremental_head=supports_incremental_head(model.backbone.norm, model.head))


class LayerPlanner:
    """Per shared linear layer: the path each task takes, the kernel timings the paths
    are priced by, and the ``dW`` operand (sparse or dense) for a row count.

    Args:
        base: the base task; ``subs``: the sub-tasks, in engine order.
        timings: one set for every layer, one per layer shape ``(in, out)``, or
            ``None``: this machine's, loaded or calibrated on first need.
        device: where calibration measures, if it must.
        tokens: tokens per image (what calibration prices a layer at).

    Attributes:
        layer_paths: last path per task key and layer (see ``SharedEngine``).
        densities: last measured kept fraction per ``(task key, layer)``, which the
            next path choice is priced by (``layer + "#element"``: element density).
    """

    def __init__(self, base: EngineTask, subs: list[EngineTask], timings, device, tokens: int) -> None:
        self.base = base
        self.subs = subs
        self.layer_paths: dict[str, dict[str, str]] = {}
        self.densities: dict[tuple[str, str], float] = {}
        self._timings = timings
        self._device = device
        self._tokens = tokens

    @property
    def timings(self) -> KernelTimings | dict[tuple[int, int], KernelTimings]:
        """The timings given, or this machine's per layer shape (cached on disk)."""
        if self._timings is None:
            shapes = {(layer.weight.shape[1], layer.weight.shape[0])
                      for task in self.subs for layer in task.layers.values()}
            self._timings = {shape: load_or_calibrate(self._device, in_features=shape[0], out_features=shape[1],
                                                      tokens=self._tokens) for shape in sorted(shapes)}
        return self._timings

    def timings_for(self, in_features: int, out_features: int) -> KernelTimings:
        timings = self.timings
        if isinstance(timings, KernelTimings):
            return timings
        return timings.get((in_features, out_features)) or next(iter(timings.values()))

    def choose(self, task: EngineTask, name: str, layer: TaskLayer | None, tokens: int, in_features: int,
               out_features: int, temporal: bool) -> str:
        """The path for ``task``'s layer ``name`` on this call, priced at the layer's last
        measured density (recorded in ``layer_paths``)."""
        key = f"{task.name}/temporal" if temporal else task.name
        density = self.densities.get((key, name), task.initial_density)
        path = choose_path(self.timings_for(in_features, out_features), tokens=tokens, in_features=in_features,
                           out_features=out_features,
                           token_density=density, weight_density=weight_cost_density(layer),
                           element_density=self.densities.get((key, name + "#element")),
                           stacked=not temporal, structured=layer is not None and layer.structured is not None)  # the task domain stacks changed rows (task_domain.py)
        self.layer_paths.setdefault(key, {})[name] = path
        return path

    def weight_delta_operand(self, layer: TaskLayer, rows: int) -> Tensor:
        """``dW`` sparse or dense, whichever the cost model prices lower for ``rows`` rows."""
        if layer.structured is not None:
            return layer.structured
        operand = layer.operand_by_rows.get(rows)
        if operand is None:
            path = choose_weight_path(self.timings_for(layer.weight.shape[1], layer.weight.shape[0]),
                                      tokens=max(1, rows), in_features=layer.weight.shape[1],
                                      out_features=layer.weight.shape[0], weight_density=layer.weight_density)
            operand = layer.operand_by_rows[rows] = layer.dw_sparse if path == "sparse" else layer.dw
        return operand


def weight_cost_density(layer: TaskLayer | None) -> float:
    """What the cost model prices ``dW x_0`` at: the non-zero fraction of ``dW``, or for a
    structured one its multiply-adds per row over ``in * out``."""
    if layer is None:
        return 0.0
    if layer.structured is None:
        return layer.weight_density
    return layer.structured.macs_per_row / layer.weight.numel()


def check_supported(backbone: nn.Module) -> None:
    """The block re-implementation covers plain pre-norm timm ViT blocks only."""
    for index, block in enumerate(backbone.blocks):
        attn, mlp = block.attn, block.mlp
        plain = (type(block) is Block and type(attn) is Attention and type(mlp) is Mlp
                 and all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm))
                 and getattr(attn, "gate", None) is None
                 and all(isinstance(n, nn.LayerNorm) and n.elementwise_affine and n.bias is not None
                         for n in (block.norm1, block.norm2)))
        if not plain:
            raise MtlCompressError(f"block {index} is not a plain timm ViT block (qk-norm, gated attention, a "
                                   "custom MLP or a norm other than LayerNorm); the shared engine cannot run it; "
                                   "use --engine dense")
