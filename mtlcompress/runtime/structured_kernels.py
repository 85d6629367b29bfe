"""Structured ``dW_t x_0``: the weight-delta product as dense GEMMs on whole blocks or
thin factors (bundle layouts ``block<h>x<w>`` and ``lowrank``), instead of a sparse
kernel whose cost stays high at low densities on CPU. Built once per layer from the
bundle's stored layout (:func:`structured_operand`)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlcompress.bundle import layouts
from mtlcompress.bundle.structured_codecs import block_shape, split_lowrank

__all__ = ["LowRankDelta", "BlockDelta", "StructuredDelta", "structured_delta_matmul", "structured_operand"]

class LowRankDelta:
    """``dW = A @ B`` (``A [out, r]``, ``B [r, in]``): ``x @ dW^T`` as two thin GEMMs."""

    def __init__(self, left: Tensor, right: Tensor) -> None:
        self.left_t = left.t().contiguous()    # [r, out]
        self.right_t = right.t().contiguous()  # [in, r]
        self.shape = (left.shape[0], right.shape[1])

    @property
    def macs_per_row(self) -> int:
        return self.left_t.shape[0] * (self.shape[0] + self.shape[1])

    def add_matmul_(self, out: Tensor, x: Tensor) -> Tensor:
        """``out [M, out] += x [M, in] @ dW^T``."""
        return out.addmm_(torch.mm(x, self.right_t), self.left_t)

    def dense(self) -> Tensor:
        return self.left_t.t() @ self.right_t.t()


class BlockDelta:
    """``dW`` as whole ``h x w`` blocks: ``x @ dW^T`` gathers each block's ``w`` input
    columns, runs one batched GEMM over the blocks and adds each block's ``h`` outputs
    into its rows (``index_add_``)."""

    def __init__(self, block_rows: Tensor, block_cols: Tensor, blocks: Tensor, shape: tuple[int, int]) -> None:
        self.h, self.w = int(blocks.shape[1]), int(blocks.shape[2])
        self.block_rows, self.block_cols = block_rows.long(), block_cols.long()
        self.blocks_t = blocks.transpose(1, 2).contiguous()  # [n, w, h]
        self.shape = shape

    @property
    def macs_per_row(self) -> int:
        return self.blocks_t.numel()

    def add_matmul_(self, out: Tensor, x: Tensor) -> Tensor:
        rows = x.shape[0]
        gathered = x.view(rows, -1, self.w).index_select(1, self.block_cols).transpose(0, 1)  # [n, M, w]
        products = torch.bmm(gathered, self.blocks_t)  # [n, M, h]
        out.view(rows, -1, self.h).index_add_(1, self.block_rows, products.transpose(0, 1))
        return out

    def dense(self) -> Tensor:
        out = self.blocks_t.new_zeros(self.shape[0] // self.h, self.h, self.shape[1] // self.w, self.w)
        out[self.block_rows, :, self.block_cols, :] = self.blocks_t.transpose(1, 2)
        return out.reshape(self.shape)


StructuredDelta = LowRankDelta | BlockDelta


def structured_delta_matmul(x: Tensor, dw: StructuredDelta) -> Tensor:
    """``x [..., in] @ dW^T`` for a structured ``dW``: ``[..., out]``."""
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    out = x2d.new_zeros(x2d.shape[0], dw.shape[0])
    return dw.add_matmul_(out, x2d).reshape(*lead, dw.shape[0])


def structured_operand(dw: Tensor) -> StructuredDelta | None:
    """The structured operand of a 2-D weight delta whose smallest bundle layout is
    structured (the layout the bundle stored it in, found again), else None."""
    encoded = layouts.encode(dw, "auto")
    rows, cols = dw.shape
    if encoded.layout == "lowrank":
        return LowRankDelta(*split_lowrank(encoded.parts["values"], rows, cols))
    if encoded.layout in layouts.STRUCTURED_LAYOUTS:
        h, w = block_shape(encoded.layout)
        index = encoded.parts["block_indices"].long()
        blocks = encoded.parts["values"].view(-1, h, w)
        return BlockDelta(index // (cols // w), index % (cols // w), blocks, (rows, cols))
    return None
