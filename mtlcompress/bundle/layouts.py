"""Storage layouts for one weight tensor (or weight delta) inside a bundle.

A bundle stores the base backbone dense and, for every other task, a sparse delta of
each weight. This module turns one tensor into a handful of plain 1-D tensors
("parts") that safetensors can hold, and back, with no pickle anywhere.

Every tensor is handled as a 2-D view ``[rows, cols]``: rank >= 2 is
``[shape[0], prod(shape[1:])]``, rank 1 is ``[1, n]``, rank 0 is ``[1, 1]``. Only
entries that compare unequal to zero are stored by the sparse layouts, so ``-0.0``
comes back as ``+0.0``; NaN and Inf are stored like any other non-zero value.

Layouts and their parts (all parts are 1-D except dense ``values``):

* ``dense``: ``values``, the tensor itself, in its own shape.
* ``bitmask``: ``bitmask`` (uint8, ``rows * ceil(cols / 8)`` bytes: each row is
  packed on its own and padded with zero bits, so any row decodes without the
  others), ``values`` (non-zeros in row-major order) and ``row_offsets``
  (``rows + 1`` entries: row ``r`` owns ``values[row_offsets[r]:row_offsets[r+1]]``).
  Bit order is ``numpy.packbits``' default ("big"): column ``8*j`` of a row is the
  most significant bit (0x80) of that row's byte ``j``. The layout follows
  compressed-tensors' ``compressed``/``bitmask``/``row_offsets`` idea, with
  CSR-style offsets (leading 0 and total) so corrupt counts are detectable.
* ``csr``: ``row_offsets``, ``col_indices`` (strictly increasing within a row) and
  ``values``.
* ``coo``: ``indices`` (flat row-major positions, strictly increasing) and
  ``values``.
* ``block<h>x<w>`` and ``lowrank``: structured weight deltas (whole blocks; two thin
  factors), see :mod:`~mtlcompress.bundle.structured_codecs`. They are in
  ``STRUCTURED_LAYOUTS``, not ``LAYOUTS``: ``LAYOUTS`` holds any tensor bit-exactly.

Index dtypes are a pure function of the shape, so a reader can check them and
:func:`layout_nbytes` can predict sizes exactly: offsets and flat indices are int32
when ``rows * cols < 2**31`` and int64 otherwise; column indices are int16 when
``cols < 2**15``, then int32, then int64. Signed types are used because torch's
sparse kernels and safetensors' torch bridge handle them everywhere.

Parts read from a file are untrusted: :func:`decode_parts` checks every invariant
before indexing with them and raises :class:`~mtlcompress.errors.BundleError` with a
one-line message naming the layout and the problem.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from mtlcompress.bundle.sparse_codecs import (encode_bitmask, encode_coo, encode_csr, layout_error, part_dtype,
                                             validate_bitmask, validate_coo, validate_csr)
from mtlcompress.bundle.structured_codecs import (BLOCK_LAYOUTS, LOWRANK, block_numel, encode_blocks, encode_lowrank,
                                                 rebuild_lowrank, smallest_structured, structured_fit,
                                                 structured_nbytes, structured_units, validate_blocks)
from mtlcompress.errors import BundleError

__all__ = ["DTYPE_NAMES", "LAYOUTS", "STRUCTURED_LAYOUTS", "ALL_LAYOUTS", "EncodedTensor", "decode", "decode_parts",
           "dtype_to_str", "encode", "encoded_from_state", "encoded_to_state", "layout_nbytes", "nbytes_fit",
           "part_names", "str_to_dtype", "to_torch_sparse_csr", "view_2d_shape"]

# Value dtypes a bundle may hold, by the name a manifest uses for them.
DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NAME_OF_DTYPE = {dtype: name for name, dtype in DTYPE_NAMES.items()}



@dataclass(frozen=True, eq=False)
class EncodedTensor:
    """One tensor in a storage layout: what a bundle writes for a weight.

    ``eq=False`` because comparing dicts of tensors with ``==`` is not meaningful;
    compare ``decode(a)`` and ``decode(b)`` instead.
    """

    layout: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        """Bytes the parts occupy on disk (safetensors adds only a header)."""
        return sum(part.numel() * part.element_size() for part in self.parts.values())


# --------------------------------------------------------------------------- dtypes


def dtype_to_str(dtype: torch.dtype) -> str:
    """Name of a value dtype for a JSON manifest; only the allow-listed floats."""
    try:
        return _NAME_OF_DTYPE[dtype]
    except KeyError:
        raise BundleError(
            f"dtype {dtype} cannot be stored in a bundle; allowed: {', '.join(DTYPE_NAMES)}"
        ) from None


def str_to_dtype(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_to_str`; rejects anything off the allow-list."""
    if isinstance(name, str) and name in DTYPE_NAMES:
        return DTYPE_NAMES[name]
    raise BundleError(f"unknown dtype {name!r} in bundle; allowed: {', '.join(DTYPE_NAMES)}")


# ----------------------------------------------------------------- shapes and sizes


def view_2d_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The ``(rows, cols)`` every layout works on for a tensor of ``shape``."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), math.prod(int(d) for d in shape[1:])


def _part_numel(kind: str, rows: int, cols: int, nnz: int, block_numel: int = 1) -> int:
    """Entries of a part of ``kind``: what layout_nbytes sums and validators expect."""
    return {
        "dense": rows * cols,
        "bits": rows * ((cols + 7) // 8),
        "offsets": rows + 1,
        "blocks": nnz // block_numel,
    }.get(kind, nnz)  # "values", "cols", "flat": one per stored non-zero


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------- registry


class _Layout(NamedTuple):
    """One layout: its parts (name -> kind, see part_dtype) and its sparse codec."""

    parts: dict[str, str]
    encode: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] | None
    validate: Callable[[Mapping[str, torch.Tensor], int, int], torch.Tensor] | None
    rebuild: Callable[[Mapping[str, torch.Tensor], int, int], torch.Tensor] | None = None  # dense view from parts
    block_numel: int = 1  # stored values per entry of a "blocks" part


# Insertion order is the tie-break order of encode(layout="auto"): on equal size the
# simplest layout to read wins (dense, then bitmask, csr, coo).
_LAYOUTS: dict[str, _Layout] = {
    "dense": _Layout({"values": "dense"}, None, None),
    "bitmask": _Layout(
        {"bitmask": "bits", "values": "values", "row_offsets": "offsets"},
        encode_bitmask,
        validate_bitmask,
    ),
    "csr": _Layout(
        {"row_offsets": "offsets", "col_indices": "cols", "values": "values"},
        encode_csr,
        validate_csr,
    ),
    "coo": _Layout({"indices": "flat", "values": "values"}, encode_coo, validate_coo),
}
LAYOUTS: tuple[str, ...] = tuple(_LAYOUTS)
for _name in BLOCK_LAYOUTS:
    _LAYOUTS[_name] = _Layout({"block_indices": "blocks", "values": "values"},
                              lambda view, mask, name=_name: encode_blocks(view, name),
                              lambda parts, rows, cols, name=_name: validate_blocks(name, parts, rows, cols),
                              block_numel=block_numel(_name))
_LAYOUTS[LOWRANK] = _Layout({"values": "values"}, lambda view, mask: encode_lowrank(view), None, rebuild_lowrank)
STRUCTURED_LAYOUTS: tuple[str, ...] = (*BLOCK_LAYOUTS, LOWRANK)
ALL_LAYOUTS: tuple[str, ...] = (*LAYOUTS, *STRUCTURED_LAYOUTS)


def _layout(layout: str) -> _Layout:
    if isinstance(layout, str) and layout in _LAYOUTS:
        return _LAYOUTS[layout]
    raise BundleError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def part_names(layout: str) -> tuple[str, ...]:
    """Part names a layout stores, so a bundle reader can account for every key."""
    return tuple(_layout(layout).parts)


# ------------------------------------------------------------------ public API


def layout_nbytes(shape: Sequence[int], dtype: torch.dtype, nnz: int, layout: str) -> int:
    """Exact bytes of the parts :func:`encode` would write, without encoding.

    ``nnz`` is the number of entries that are not zero; for a structured layout it is
    the number of values stored (blocks x block size, or rank x (rows + cols)).
    """
    rows, cols = view_2d_shape(shape)
    if layout in STRUCTURED_LAYOUTS:
        units = structured_units(layout, rows, cols, int(nnz))
        if units is None:
            raise layout_error(layout, f"{nnz} stored values are not whole blocks or factors")
        return structured_nbytes(layout, rows, cols, dtype, units)
    return sum(
        _part_numel(kind, rows, cols, int(nnz)) * _itemsize(part_dtype(kind, rows, cols, dtype))
        for kind in _layout(layout).parts.values()
    )


def nbytes_fit(shape: Sequence[int], dtype: torch.dtype, nnz: int, layout: str, nbytes: int) -> bool:
    """Whether a tensor of ``shape`` with ``nnz`` non-zeros can take ``nbytes`` in ``layout``
    (exactly :func:`layout_nbytes` for ``LAYOUTS``; whole blocks or ranks that can hold
    ``nnz`` non-zeros for the structured layouts)."""
    if layout in STRUCTURED_LAYOUTS:
        return structured_fit(layout, *view_2d_shape(shape), dtype, int(nnz), int(nbytes))
    return nbytes == layout_nbytes(shape, dtype, nnz, layout)


def encode(tensor: torch.Tensor, layout: str = "auto") -> EncodedTensor:
    """Encode ``tensor`` in ``layout``; ``"auto"`` picks the smallest.

    "auto" compares :func:`layout_nbytes` for every layout of ``LAYOUTS`` (one count of
    non-zeros, nothing materialised); ties go to the earlier of dense, bitmask, csr,
    coo. A structured layout wins only when strictly smaller: whole blocks (a structured
    weight delta) or a low-rank product that reproduces the tensor.
    """
    dtype_to_str(tensor.dtype)  # rejects dtypes a manifest could not name
    shape = tuple(tensor.shape)
    rows, cols = view_2d_shape(shape)
    view = tensor.detach().reshape(rows, cols)
    if layout == "auto":
        nnz = int(torch.count_nonzero(view))
        layout = min(LAYOUTS, key=lambda name: layout_nbytes(shape, tensor.dtype, nnz, name))
        layout = smallest_structured(view, layout_nbytes(shape, tensor.dtype, nnz, layout)) or layout
    spec = _layout(layout)
    if spec.encode is None:
        parts = {"values": tensor.detach().clone().contiguous()}  # never alias the model
    else:
        parts = {k: v.contiguous() for k, v in spec.encode(view, view != 0).items()}
    return EncodedTensor(layout=layout, shape=shape, dtype=tensor.dtype, parts=parts)


def _check_shape(layout: str, shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise layout_error(layout, f"shape {shape!r} is not a sequence of integers") from None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise layout_error(layout, f"shape {list(dims)!r} must be non-negative integers")
    return dims


def _check_parts(
    layout: str, rows: int, cols: int, dtype: torch.dtype, parts: Mapping[str, torch.Tensor]
) -> None:
    """Names, types, dtypes, ranks, lengths and devices: checked alike for every layout."""
    kinds = _layout(layout).parts
    if not isinstance(parts, Mapping):
        raise layout_error(layout, f"parts must be a mapping, got {type(parts).__name__}")
    missing = sorted(set(kinds) - set(parts))
    extra = sorted(map(str, set(parts) - set(kinds)))
    if missing or extra:
        raise layout_error(layout, f"missing parts {missing}, unexpected parts {extra}")
    if not all(isinstance(p, torch.Tensor) and p.layout == torch.strided for p in parts.values()):
        raise layout_error(layout, "every part must be a dense (strided) torch.Tensor")
    nnz = parts["values"].numel()
    block_numel = _layout(layout).block_numel
    if nnz % block_numel:
        raise layout_error(layout, f"{nnz} values are not whole blocks of {block_numel}")
    for name, kind in kinds.items():
        part, expected = parts[name], part_dtype("flat" if kind == "blocks" else kind, rows, cols, dtype)
        if part.dtype != expected:
            raise layout_error(layout, f"part {name!r} has dtype {part.dtype}, expected {expected}")
        if kind != "dense" and part.dim() != 1:
            raise layout_error(layout, f"part {name!r} must be 1-D, got shape {tuple(part.shape)}")
        if part.numel() != _part_numel(kind, rows, cols, nnz, block_numel):
            want = _part_numel(kind, rows, cols, nnz, block_numel)
            raise layout_error(layout, f"part {name!r} has {part.numel()} entries, expected {want}")
    if len({p.device for p in parts.values()}) > 1:
        raise layout_error(layout, "parts live on different devices")


def _validated(
    layout: str, shape: Sequence[int], dtype: torch.dtype, parts: Mapping[str, torch.Tensor]
) -> tuple[tuple[int, ...], int, int, torch.Tensor | None]:
    """Vet untrusted parts; return the shape, 2-D view size and where values go."""
    spec = _layout(layout)
    shape = _check_shape(layout, shape)
    if dtype not in _NAME_OF_DTYPE:
        raise layout_error(layout, f"value dtype {dtype} is not one of {', '.join(DTYPE_NAMES)}")
    rows, cols = view_2d_shape(shape)
    _check_parts(layout, rows, cols, dtype, parts)
    if spec.rebuild is not None:
        return shape, rows, cols, spec.rebuild(parts, rows, cols).reshape(-1)
    if spec.validate is None:
        if tuple(parts["values"].shape) != shape:
            got = tuple(parts["values"].shape)
            raise layout_error(layout, f"values has shape {got}, expected {shape}")
        return shape, rows, cols, None
    return shape, rows, cols, spec.validate(parts, rows, cols)


def decode_parts(
    layout: str, shape: Sequence[int], dtype: torch.dtype, parts: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Rebuild the dense tensor from untrusted parts, validating them first.

    Dense ``values`` are returned as they are (sharing memory with ``parts``).

    Raises:
        BundleError: on any inconsistency (names, dtypes, lengths, offsets, index
            range or order, padding bits), before any part is used as an index.
    """
    shape, rows, cols, where = _validated(layout, shape, dtype, parts)
    values = parts["values"]
    if where is None:
        return values
    if _layout(layout).rebuild is not None:
        return where.reshape(shape)
    out = torch.zeros(rows * cols, dtype=values.dtype, device=values.device)
    out[where] = values
    return out.reshape(shape)


def decode(encoded: EncodedTensor) -> torch.Tensor:
    """Dense tensor of an :class:`EncodedTensor` (validated like :func:`decode_parts`)."""
    return decode_parts(encoded.layout, encoded.shape, encoded.dtype, encoded.parts)


def to_torch_sparse_csr(encoded: EncodedTensor) -> torch.Tensor:
    """torch sparse CSR tensor of the 2-D view, built from the parts without densifying.

    Index tensors are int32 when the tensor has fewer than 2**31 entries, else int64
    (torch wants both equal). Zeros of the dense layout are dropped.
    """
    parts = encoded.parts
    shape, rows, cols, where = _validated(encoded.layout, encoded.shape, encoded.dtype, parts)
    values = parts["values"]
    if encoded.layout in STRUCTURED_LAYOUTS:  # blocks hold zeros and are not in row order
        values, where = decode(encoded), None
    if where is None:  # dense: keep only the non-zeros, like the sparse layouts
        values = values.reshape(-1)
        where = values != 0
        values = values[where]
    flat = where.nonzero().reshape(-1) if where.dtype == torch.bool else where
    row, col = flat // max(cols, 1), flat % max(cols, 1)
    crow = torch.zeros(rows + 1, dtype=torch.int64, device=values.device)
    torch.cumsum(torch.bincount(row, minlength=rows), dim=0, out=crow[1:])
    index_dtype = part_dtype("offsets", rows, cols, values.dtype)
    with warnings.catch_warnings():  # torch's one-off "CSR support is in beta" notice
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow.to(index_dtype),
            col.to(index_dtype),
            values,
            size=(rows, cols),
            dtype=values.dtype,
            check_invariants=False,  # validated above
        )


# ------------------------------------------------------------ safetensors state


def encoded_to_state(name: str, encoded: EncodedTensor) -> dict[str, torch.Tensor]:
    """Flatten to ``{f"{name}.{part}": tensor}`` for one safetensors file.

    Layout, shape and dtype are not in the state: they belong in the manifest
    (use :func:`dtype_to_str` for the dtype).
    """
    return {f"{name}.{part}": tensor for part, tensor in encoded.parts.items()}


def encoded_from_state(
    name: str,
    layout: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    state: Mapping[str, torch.Tensor],
) -> EncodedTensor:
    """Collect ``name``'s parts from a loaded state dict; validation happens on decode.

    Keys are looked up, not scanned for, because tensor names nest ("a.b" and
    "a.b.c"); checking that every key in a file was claimed by some tensor is the
    bundle reader's job (see :func:`part_names`).
    """
    keys = {part: f"{name}.{part}" for part in part_names(layout)}
    missing = [key for key in keys.values() if key not in state]
    if missing:
        raise layout_error(layout, f"tensor {name!r} has no {', '.join(missing)} in the bundle")
    return EncodedTensor(
        layout=layout,
        shape=_check_shape(layout, shape),
        dtype=dtype,
        parts={part: state[key] for part, key in keys.items()},
    )
