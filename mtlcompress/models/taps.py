"""Taps on the inputs of the shared linear layers of a timm ViT backbone.

The method works on the input ``x`` of every shared linear layer (qkv, attention proj,
mlp fc1, mlp fc2). Two things need those inputs: the activation-sparsity penalty
(record the base's and the sub-task's inputs and penalise their difference), and the
reference engine (replace the sub-task's input by ``x_0 + threshold(x_t - x_0)``).
Both are forward pre-hooks, so the timm modules run unmodified. Multi-level heads also
read whole blocks' outputs (``record_block_outputs``, forward hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from mtlcompress.models.activation_sparsity import threshold_delta

SHARED_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def shared_linear_names(depth: int) -> list[str]:
    """Names (relative to the backbone) of every shared linear layer, in execution order."""
    return [f"blocks.{i}.{kind}" for i in range(depth) for kind in SHARED_LINEARS]


def layer_kind(name: str) -> str:
    return name.split(".", 2)[2]


@contextlib.contextmanager
def linear_input_hooks(backbone: nn.Module, names: list[str],
                       hook: Callable[[str, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """While active, ``hook(name, x)`` sees the input of each named layer and may return
    a replacement (``None`` keeps it)."""
    modules = dict(backbone.named_modules())
    handles = []
    for name in names:
        def pre_hook(module: nn.Module, args: tuple, name: str = name) -> tuple | None:
            replaced = hook(name, args[0])
            return None if replaced is None else (replaced, *args[1:])
        handles.append(modules[name].register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def record_linear_inputs(backbone: nn.Module, names: list[str], detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Collect ``{layer: input}`` of each forward inside the block (last one wins)."""
    recorded: dict[str, torch.Tensor] = {}

    def hook(name: str, x: torch.Tensor) -> None:
        recorded[name] = x.detach() if detach else x

    with linear_input_hooks(backbone, names, hook):
        yield recorded


@contextlib.contextmanager
def thresholded_linear_inputs(
    backbone: nn.Module,
    reference: Mapping[str, torch.Tensor],
    thresholds: Mapping[str, float],
    granularity: str,
    stats: dict[str, list[float]] | None = None,
) -> Iterator[None]:
    """Make each tapped layer see ``ref + threshold(x - ref)`` instead of ``x``.

    ``reference`` holds the base task's inputs (task domain) or the previous frame's
    (temporal domain). ``stats`` (if given) collects the kept fraction per layer.
    Layers without a threshold are left alone.
    """
    def hook(name: str, x: torch.Tensor) -> torch.Tensor | None:
        if name not in thresholds:
            return None
        ref = reference[name]
        kept, mask = threshold_delta(x - ref, float(thresholds[name]), granularity)
        if stats is not None:
            stats.setdefault(name, []).append(float(mask.float().mean()))
        return ref + kept

    with linear_input_hooks(backbone, list(thresholds), hook):
        yield


@contextlib.contextmanager
def propagated_linear_inputs(
    backbone: nn.Module,
    references: dict[str, torch.Tensor],
    thresholds: Mapping[str, float],
    granularity: str,
    stats: dict[str, list[float]] | None = None,
    drifts: list[float] | None = None,
) -> Iterator[None]:
    """Temporal taps: each layer sees ``ref + threshold(x - ref)`` and ``references``
    is updated in place to that propagated value (layers without a threshold pass
    ``x`` through and store it). ``drifts`` collects the relative unpropagated error."""
    names = [name for name in references]

    def hook(name: str, x: torch.Tensor) -> torch.Tensor | None:
        if name not in thresholds:
            references[name] = x
            return None
        kept, mask = threshold_delta(x - references[name], float(thresholds[name]), granularity)
        propagated = references[name] + kept
        references[name] = propagated
        if stats is not None:
            stats.setdefault(name, []).append(float(mask.float().mean()))
        if drifts is not None:
            drifts.append(float((x - propagated).float().norm() / x.float().norm().clamp_min(1e-12)))
        return propagated

    with linear_input_hooks(backbone, names, hook):
        yield


@contextlib.contextmanager
def record_block_outputs(backbone: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Collect ``{layer: output}`` of the named blocks (1-based) in each forward inside
    the block: what a multi-level head reads. Forward hooks, so the taps on the linear
    layers (thresholds) shape these outputs as they shape the last block's."""
    recorded: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor, layer: int = layer) -> None:
            recorded[layer] = output
        handles.append(backbone.blocks[layer - 1].register_forward_hook(hook))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
