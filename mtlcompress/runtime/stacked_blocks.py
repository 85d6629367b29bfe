"""Several tasks' ViT blocks as one: their row-wise parameters stacked over tasks.

Both lockstep paths (images: :mod:`~mtlcompress.runtime.task_domain`; video frames:
:mod:`~mtlcompress.runtime.lockstep`) keep every task's activations in one tensor,
task-major, and run each part of a block once for all tasks. The parts that treat
each row on its own (LayerNorm, LayerScale, the MLP's activation) then need each
task's own parameters per row: this module holds them, stacked ``[T, C]``, and the
small functions both paths share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["StackedBlock", "stack_blocks", "unit_layer_norm", "linear_into", "act_in_place"]


@dataclass
class StackedBlock:
    """One block's row-wise parameters, stacked over tasks (``[T, C]``)."""

    norm1: tuple[Tensor, Tensor]
    norm2: tuple[Tensor, Tensor]
    eps: tuple[float, float]
    ls1: Tensor | None   # LayerScale gammas (None: identity)
    ls2: Tensor | None
    act: nn.Module
    attn: nn.Module      # for the head layout and scale; same for every task
    unit: tuple[Tensor, Tensor]  # a unit scale and zero shift for :func:`unit_layer_norm`


def stack_blocks(blocks: Sequence[nn.Module]) -> StackedBlock:
    """The row-wise parameters of the same block of several tasks (plain timm blocks)."""
    def stack(get: Callable[[nn.Module], Tensor]) -> Tensor:
        return torch.stack([get(block) for block in blocks])

    def layer_scale(name: str) -> Tensor | None:
        scales = [getattr(block, name) for block in blocks]
        return None if isinstance(scales[0], nn.Identity) else torch.stack([s.gamma for s in scales])

    first = blocks[0]
    weight = first.norm1.weight
    return StackedBlock(norm1=(stack(lambda b: b.norm1.weight), stack(lambda b: b.norm1.bias)),
                        norm2=(stack(lambda b: b.norm2.weight), stack(lambda b: b.norm2.bias)),
                        eps=(first.norm1.eps, first.norm2.eps), ls1=layer_scale("ls1"), ls2=layer_scale("ls2"),
                        act=first.mlp.act, attn=first.attn, unit=(torch.ones_like(weight), torch.zeros_like(weight)))


def unit_layer_norm(block: StackedBlock, x: Tensor, which: int) -> Tensor:
    """``F.layer_norm`` of ``block``'s norm ``which`` (0: norm1, 1: norm2) over the last
    dim, without the affine part: each row's task's scale and shift are applied after.
    It gets a unit scale and zero shift instead of none, which selects a CPU kernel
    twice as fast with the same bits (torch 2.14, our 2-core machine: 83 against 173 us
    on 788 rows of 384)."""
    return F.layer_norm(x, x.shape[-1:], *block.unit, eps=block.eps[which])


def linear_into(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` for rows ``x [M, in]``, into ``out`` if given."""
    if out is None:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def act_in_place(act: nn.Module, x: Tensor) -> Tensor:
    """``act(x)``, written over ``x`` where the activation has an in-place form (GELU,
    timm's ViT default); other activations return a new tensor."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)
