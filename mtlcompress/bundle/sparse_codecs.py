"""The sparse layouts' codecs (``bitmask``, ``csr``, ``coo``; see :mod:`~mtlcompress.bundle.layouts`
for the format): each layout's encoder, its validator of untrusted parts, and the
one rule for every part's dtype that both sides, and the size predictions, follow.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mtlcompress.errors import BundleError

# Bit j of a packed byte (0 = first column of the group) sits at this shift.
_BIT_SHIFTS = (7, 6, 5, 4, 3, 2, 1, 0)


# ---------------------------------------------------------------- part dtypes


def _index_dtype(limit: int, *, allow_int16: bool = False) -> torch.dtype:
    """Smallest signed integer dtype whose maximum is at least ``limit``."""
    for dtype in (torch.int16, torch.int32, torch.int64)[0 if allow_int16 else 1 :]:
        if limit <= torch.iinfo(dtype).max:
            return dtype
    raise BundleError(f"tensor too large to index: {limit} elements")


def part_dtype(kind: str, rows: int, cols: int, dtype: torch.dtype) -> torch.dtype:
    """The one rule for every part's dtype, used by encoders, validators and sizes."""
    if kind in ("dense", "values"):
        return dtype
    if kind == "bits":
        return torch.uint8
    if kind == "cols":
        return _index_dtype(cols, allow_int16=True)
    return _index_dtype(rows * cols)  # "offsets" and "flat"


# ------------------------------------------------------------------ bit packing


def bit_shifts(device: torch.device) -> torch.Tensor:
    return torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=device)


def pack_rows(mask: torch.Tensor) -> torch.Tensor:
    """Pack a ``[rows, cols]`` bool mask row by row into ``rows * ceil(cols/8)`` bytes."""
    rows, cols = mask.shape
    nbytes_row = (cols + 7) // 8
    padded = torch.zeros(rows, nbytes_row * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :cols] = mask
    groups = padded.view(rows, nbytes_row, 8) << bit_shifts(mask.device)
    return groups.sum(dim=-1, dtype=torch.uint8).reshape(-1)


def unpack_rows(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """All ``rows * ceil(cols/8) * 8`` bits as a ``[rows, padded_cols]`` uint8 0/1 tensor."""
    nbytes_row = (cols + 7) // 8
    bits = (packed.reshape(rows, nbytes_row, 1) >> bit_shifts(packed.device)) & 1
    return bits.reshape(rows, nbytes_row * 8)


# ------------------------------------------------------------------- encoders
# An encoder gets the 2-D view and its non-zero mask and returns the parts.


def row_offsets_of(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = mask.shape
    offsets = torch.zeros(rows + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(mask.sum(dim=1), dim=0, out=offsets[1:])
    return offsets.to(part_dtype("offsets", rows, cols, torch.int64))


def encode_bitmask(view: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"bitmask": pack_rows(mask), "values": view[mask], "row_offsets": row_offsets_of(mask)}


def encode_csr(view: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    col_dtype = part_dtype("cols", *mask.shape, view.dtype)
    return {
        "row_offsets": row_offsets_of(mask),
        "col_indices": mask.nonzero()[:, 1].to(col_dtype),
        "values": view[mask],
    }


def encode_coo(view: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    flat_dtype = part_dtype("flat", *mask.shape, view.dtype)
    return {"indices": mask.reshape(-1).nonzero().reshape(-1).to(flat_dtype), "values": view[mask]}


# ------------------------------------------------------------------ validators
# A sparse validator checks its layout's invariants on parts whose names, dtypes,
# ranks and lengths ``layouts`` already vetted, and returns where the values go in
# the flattened 2-D view (a bool mask or int64 positions), ready for decoding.


def layout_error(layout: str, problem: str) -> BundleError:
    """The one-line error every layout check raises, naming the layout."""
    return BundleError(f"{layout} layout: {problem}")


def _check_offsets(layout: str, offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    offsets = offsets.to(torch.int64)
    if int(offsets[0]) != 0:
        raise layout_error(layout, f"row_offsets must start at 0, got {int(offsets[0])}")
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise layout_error(layout, "row_offsets is not non-decreasing")
    if int(offsets[-1]) != nnz:
        raise layout_error(layout, f"row_offsets ends at {int(offsets[-1])} but there are {nnz} values")
    return offsets


def validate_bitmask(parts: Mapping[str, torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    offsets = _check_offsets("bitmask", parts["row_offsets"], parts["values"].numel())
    bits = unpack_rows(parts["bitmask"], rows, cols)
    if bool(bits[:, cols:].any()):
        raise layout_error("bitmask", "padding bits after the last column of a row are not zero")
    mask = bits[:, :cols].bool()
    if not torch.equal(mask.sum(dim=1), offsets[1:] - offsets[:-1]):
        raise layout_error("bitmask", "set bits per row do not match row_offsets")
    return mask.reshape(-1)


def validate_csr(parts: Mapping[str, torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    nnz = parts["values"].numel()
    offsets = _check_offsets("csr", parts["row_offsets"], nnz)
    col = parts["col_indices"].to(torch.int64)
    if nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
        raise layout_error("csr", f"column index out of range [0, {cols})")
    row = torch.repeat_interleave(
        torch.arange(rows, device=col.device), offsets[1:] - offsets[:-1], output_size=nnz
    )
    if bool((col[1:] <= col[:-1])[row[1:] == row[:-1]].any()):
        raise layout_error("csr", "column indices not strictly increasing within a row (duplicate?)")
    return row * cols + col


def validate_coo(parts: Mapping[str, torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    flat = parts["indices"].to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= rows * cols):
        raise layout_error("coo", f"flat index out of range [0, {rows * cols})")
    if bool((flat[1:] <= flat[:-1]).any()):
        raise layout_error("coo", "indices not strictly increasing (duplicate or unsorted)")
    return flat
