"""Analytic FLOPs per image: one dense task model, T independent models, the bundle,
and the limit of perfect sharing.

Convention (the same as ``torch.utils.flop_counter.FlopCounterMode``): one
multiply-add is 2 FLOPs, and only matrix products and convolutions are counted:

* ``patch_embed``: the patch-embedding convolution, ``2 * P * D * 3 * p^2``;
* ``linear``: every ``qkv``, ``proj``, ``fc1``, ``fc2`` of every block, ``2 * N * in * out``;
* ``attention``: the two attention matmuls ``Q K^T`` and ``A V``, ``4 * N^2 * D`` per block;
* ``head``: the task head's own convolutions and matrix products. The dense head's 3x3
  and 1x1 convolutions analytically, ``2 * P * out * in * k^2`` each (padding is not
  discounted, as FlopCounterMode does not); every other head type (``linear``,
  ``multilevel``, a user's ``module``) is *counted*, by running FlopCounterMode over the
  head once on meta tensors (``task_head_flops``): exact by this convention for our
  heads, and for a user's head as exact as FlopCounterMode's op coverage;

with ``P = rows * cols`` patches, ``N = P + prefix tokens`` and ``D`` the embedding width.
Biases, LayerNorm, softmax, GELU, residual adds, layer scale, pixel shuffle, bilinear
upsampling and the input normalisation are *not* counted (they are elementwise and small next to the
products). Compare with FlopCounterMode on a model whose attention runs unfused
(``attn.fused_attn = False``): for timm's fused ``scaled_dot_product_attention`` on
CPU tensors it counts 0 (torch 2.14), so it under-reports by ``attention``.

The bundle (b): the base task runs densely. A sub-task's tapped linear layer with an
activation threshold costs ``2 * nnz(dW) * N`` for ``dW x_0`` (a low-rank delta
``A B``: ``2 * r * (in + out) * N``) plus
``2 * in * out * N * d`` for ``W_t dx``, where ``d`` is the kept fraction of the
activation delta (tokens for token granularity; elements for element granularity,
where ``2 * nnz(dx) * out`` is the same number). A tapped layer without a threshold
runs exactly: ``2 * N * in * out``. The sub-task's patch embedding costs only its
``dW x`` term, ``2 * nnz(dW_patch) * P`` (the image is shared); attention and head run
densely. The limit (c) keeps, per sub-task, only the attention matmuls and the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.backbone import BackboneConfig
from mtlcompress.models.checkpoint import CheckpointInfo
from mtlcompress.models.heads import build_head
from mtlcompress.models.taps import layer_kind, shared_linear_names
from mtlcompress.runtime.structured_kernels import structured_operand

PARTS = ("patch_embed", "linear", "attention", "head")
PATCH_EMBED_WEIGHT = "patch_embed.proj.weight"


def token_count(config: BackboneConfig) -> int:
    """Tokens every block sees: patches plus class/register tokens."""
    return config.num_tokens


def linear_shapes(config: BackboneConfig) -> dict[str, tuple[int, int]]:
    """``{layer: (in_features, out_features)}`` for every tapped linear, in execution order."""
    dim, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
    # SwiGLU: fc1 stands for fc1_g and fc1_x together; SwiGLUPacked: fc2 reads half of fc1's output.
    fc1_out = 2 * hidden if config.mlp_layer == "swiglu" else hidden
    fc2_in = hidden // 2 if config.mlp_layer == "swiglu_packed" else hidden
    shapes = {"attn.qkv": (dim, 3 * dim), "attn.proj": (dim, dim), "mlp.fc1": (dim, fc1_out), "mlp.fc2": (fc2_in, dim)}
    return {name: shapes[layer_kind(name)] for name in shared_linear_names(config.depth)}


def linear_flops(config: BackboneConfig, layer: str) -> int:
    """Dense FLOPs of one tapped linear layer for one image."""
    fan_in, fan_out = linear_shapes(config)[layer]
    return 2 * token_count(config) * fan_in * fan_out


def patch_embed_flops(config: BackboneConfig) -> int:
    return 2 * config.num_patches * config.embed_dim * 3 * config.patch_size**2


def attention_flops(config: BackboneConfig) -> int:
    """``Q K^T`` and ``A V`` of every block (all heads together)."""
    return config.depth * 4 * token_count(config) ** 2 * config.embed_dim


def head_flops(config: BackboneConfig, out_channels: int, hidden: int) -> int:
    """``DenseHead``: 3x3 conv ``D -> hidden``, then 1x1 conv ``hidden -> out * p^2``."""
    patches = config.num_patches
    return 2 * patches * hidden * config.embed_dim * 9 + 2 * patches * out_channels * config.patch_size**2 * hidden


def task_head_flops(info: CheckpointInfo) -> int:
    """FLOPs per image of the head ``info`` describes, by its own type: the dense head
    by ``head_flops``, any other counted by FlopCounterMode on a meta-device head (no
    memory, no weights). A user's head is built from its installed module, as loading
    its bundle already did."""
    config = info.backbone
    if info.head_type == "dense":
        return head_flops(config, info.out_channels, info.head_hidden)
    with torch.device("meta"):
        head = build_head(info.head_type, config.embed_dim, info.out_channels, config.patch_size, info.head_hidden,
                          layers=info.head_layers, module=info.head_module)
        tokens = torch.empty(1, config.num_patches, config.embed_dim)
        features = tokens if info.head_layers is None else [tokens] * len(info.head_layers)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            head(features, config.grid_size)
    return int(counter.get_total_flops())


def dense_model_flops(config: BackboneConfig, out_channels: int, head_hidden: int,
                      head: int | None = None) -> dict[str, int]:
    """FLOPs of one dense single-task model per image, by part, plus ``total``;
    ``head``: the head's FLOPs when it is not the dense head (``task_head_flops``)."""
    parts = {
        "patch_embed": patch_embed_flops(config),
        "linear": sum(linear_flops(config, layer) for layer in linear_shapes(config)),
        "attention": attention_flops(config),
        "head": head_flops(config, out_channels, head_hidden) if head is None else head,
    }
    return {**parts, "total": sum(parts.values())}


def _task_head_flops(bundle: Bundle, task: str) -> int:
    return task_head_flops(bundle.task(task).info)


def task_model_flops(bundle: Bundle, task: str) -> dict[str, int]:
    """``dense_model_flops`` of the bundle's task, with its own head."""
    info = bundle.task(task).info
    return dense_model_flops(bundle.backbone, info.out_channels, info.head_hidden, _task_head_flops(bundle, task))


def independent_flops(bundle: Bundle) -> dict[str, dict[str, int]]:
    """(a): every task as its own dense model (heads differ per task)."""
    return {task: task_model_flops(bundle, task) for task in bundle.tasks}


def _nnz(bundle: Bundle, task: str, name: str) -> int:
    """Multiply-adds per token of ``dW x``: ``nnz(dW)``, but for a low-rank delta (stored
    as two thin factors, its product dense) the factors' ``r * (in + out)``."""
    delta = bundle.task(task).delta.get(name)
    if delta is None:
        return 0
    nnz = int(delta.count_nonzero())
    # Only a mostly non-zero delta can be a low-rank product (looking costs a sketch).
    operand = structured_operand(delta) if delta.dim() == 2 and 2 * nnz > delta.numel() else None
    return operand.macs_per_row if operand is not None else nnz


def sub_task_layer_flops(bundle: Bundle, task: str, layer: str, density: float | None) -> int:
    """(b) for one sub-task linear layer; ``density`` None means the layer has no threshold."""
    config = bundle.backbone
    if density is None:
        return linear_flops(config, layer)
    weight_term = 2 * _nnz(bundle, task, f"{layer}.weight") * token_count(config)
    return weight_term + round(linear_flops(config, layer) * density)


def bundle_flops(bundle: Bundle, densities: Mapping[str, Mapping[str, float]] | None = None,
                 default_density: float = 1.0) -> dict[str, dict[str, Any]]:
    """(b) per task, by part, with ``per_layer`` FLOPs of the tapped linears.

    ``densities`` is ``{task: {layer: kept fraction}}`` (e.g. ``DensityStats.mean()``);
    a thresholded layer missing from it uses ``default_density``. Each sub-task also
    gets ``fixed`` and ``slope``: with one uniform density ``d`` on every thresholded
    layer its FLOPs are ``fixed + slope * d``.
    """
    config, densities = bundle.backbone, densities or {}
    out: dict[str, dict[str, Any]] = {}
    for task, entry in bundle.tasks.items():
        # A backbone the shared engine cannot share (dense_path_reason) runs every task
        # as its own dense model: no savings are claimed that do not run.
        if task == bundle.base_task or config.dense_path_reason:
            dense = task_model_flops(bundle, task)
            per_layer = {layer: linear_flops(config, layer) for layer in linear_shapes(config)}
            out[task] = {**dense, "per_layer": per_layer, "fixed": dense["total"], "slope": 0}
            continue
        thresholds = entry.activation.task_thresholds
        measured = densities.get(task, {})
        per_layer, fixed, slope = {}, 0, 0
        for layer in linear_shapes(config):
            if layer in thresholds:
                density = float(measured.get(layer, default_density))
                fixed += sub_task_layer_flops(bundle, task, layer, 0.0)
                slope += linear_flops(config, layer)
            else:
                density = None
                fixed += linear_flops(config, layer)
            per_layer[layer] = sub_task_layer_flops(bundle, task, layer, density)
        parts = {
            "patch_embed": 2 * _nnz(bundle, task, PATCH_EMBED_WEIGHT) * config.num_patches,
            "linear": sum(per_layer.values()),
            "attention": attention_flops(config),
            "head": _task_head_flops(bundle, task),
        }
        fixed += parts["patch_embed"] + parts["attention"] + parts["head"]
        out[task] = {**parts, "total": sum(parts.values()), "per_layer": per_layer, "fixed": fixed, "slope": slope}
    return out


def limit_flops(bundle: Bundle) -> dict[str, dict[str, int]]:
    """(c): the base dense; each sub-task only its attention matmuls and head."""
    config, out = bundle.backbone, {}
    for task in bundle.tasks:
        if task == bundle.base_task:
            out[task] = task_model_flops(bundle, task)
        else:
            parts = {"patch_embed": 0, "linear": 0, "attention": attention_flops(config),
                     "head": _task_head_flops(bundle, task)}
            out[task] = {**parts, "total": sum(parts.values())}
    return out


def flops_report(bundle: Bundle, densities: Mapping[str, Mapping[str, float]] | None = None,
                 default_density: float = 1.0) -> dict[str, Any]:
    """(a), (b) and (c) per task and in total (see the module docstring for what counts)."""
    scenarios = {"independent": independent_flops(bundle),
                 "bundle": bundle_flops(bundle, densities, default_density),
                 "limit": limit_flops(bundle)}
    totals = {name: {part: sum(t[part] for t in per_task.values()) for part in (*PARTS, "total")}
              for name, per_task in scenarios.items()}
    totals["bundle"]["fixed"] = sum(t["fixed"] for t in scenarios["bundle"].values())
    totals["bundle"]["slope"] = sum(t["slope"] for t in scenarios["bundle"].values())
    return {"per_task": scenarios, "totals": totals}
