"""Storage layouts: exact round trips, honest sizes, and refusal of corrupt parts."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from mtlcompress.bundle.layouts import (
    DTYPE_NAMES,
    LAYOUTS,
    EncodedTensor,
    decode,
    decode_parts,
    dtype_to_str,
    encode,
    encoded_from_state,
    encoded_to_state,
    layout_nbytes,
    part_names,
    str_to_dtype,
    to_torch_sparse_csr,
    view_2d_shape,
)
from mtlcompress.errors import BundleError

DTYPES = list(DTYPE_NAMES.values())
DENSITIES = ["zero", "one", "half", "full"]


def make_tensor(
    shape: tuple[int, ...], density: str, dtype: torch.dtype, seed: int
) -> torch.Tensor:
    """A tensor whose non-zeros are exactly the chosen ones (no accidental zeros)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=gen).to(dtype)
    values[values == 0] = 1
    numel = math.prod(shape)
    keep = torch.zeros(numel, dtype=torch.bool)
    if density == "one" and numel:
        keep[torch.randint(numel, (1,), generator=gen)] = True
    elif density == "half":
        keep = torch.rand(numel, generator=gen) < 0.5
    elif density == "full":
        keep[:] = True
    return values * keep.reshape(shape).to(dtype)


tensors = st.builds(
    make_tensor,
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple),
    density=st.sampled_from(DENSITIES),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)


# ------------------------------------------------------------------ round trips


@settings(max_examples=60, deadline=None)
@given(tensor=tensors, layout=st.sampled_from(LAYOUTS + ("auto",)))
def test_round_trip_is_exact_and_sizes_are_predicted(tensor: torch.Tensor, layout: str) -> None:
    encoded = encode(tensor, layout)
    decoded = decode(encoded)
    assert decoded.shape == tensor.shape and decoded.dtype == tensor.dtype
    assert torch.equal(decoded, tensor)
    nnz = int((tensor != 0).sum())
    assert layout_nbytes(tensor.shape, tensor.dtype, nnz, encoded.layout) == encoded.nbytes


@settings(max_examples=60, deadline=None)
@given(tensor=tensors)
def test_auto_picks_the_smallest_layout_with_documented_tie_break(tensor: torch.Tensor) -> None:
    sizes = {layout: encode(tensor, layout).nbytes for layout in LAYOUTS}
    chosen = encode(tensor)
    smallest = min(sizes.values())
    if chosen.layout not in LAYOUTS:  # structured (a small tensor can be an exact low-rank product)
        assert chosen.nbytes < smallest  # only when strictly smaller
        assert torch.allclose(decode(chosen).float(), tensor.float(), rtol=1e-2, atol=1e-3)
        return
    assert chosen.nbytes == smallest
    assert chosen.layout == next(name for name in LAYOUTS if sizes[name] == smallest)


@settings(max_examples=60, deadline=None)
@given(tensor=tensors, layout=st.sampled_from(LAYOUTS))
def test_torch_sparse_csr_matches_the_dense_2d_view(tensor: torch.Tensor, layout: str) -> None:
    sparse = to_torch_sparse_csr(encode(tensor, layout))
    assert sparse.layout == torch.sparse_csr
    assert sparse.dtype == tensor.dtype
    assert torch.equal(sparse.to_dense(), tensor.reshape(view_2d_shape(tensor.shape)))


def test_torch_sparse_csr_multiplies_like_the_dense_weight() -> None:
    weight = make_tensor((16, 24), "half", torch.float32, seed=0)
    x = torch.randn(24, 5)
    for layout in LAYOUTS:
        sparse = to_torch_sparse_csr(encode(weight, layout))
        assert sparse.crow_indices().dtype == torch.int32
        torch.testing.assert_close(sparse @ x, weight @ x)


def test_rank_views_follow_the_documented_rule() -> None:
    assert view_2d_shape(()) == (1, 1)
    assert view_2d_shape((7,)) == (1, 7)
    assert view_2d_shape((3, 4, 5)) == (3, 20)
    assert view_2d_shape((2, 0, 5)) == (2, 0)


def test_negative_zero_is_stored_as_zero() -> None:
    tensor = torch.tensor([[-0.0, 2.0, 0.0]])
    for layout in ("bitmask", "csr", "coo"):
        encoded = encode(tensor, layout)
        assert encoded.parts["values"].tolist() == [2.0]
        assert torch.equal(decode(encoded), tensor)


# --------------------------------------------------------------- wire format


def test_bitmask_bits_are_numpy_packbits_order_per_row() -> None:
    tensor = make_tensor((5, 13), "half", torch.float32, seed=3)
    mask = (tensor != 0).numpy()
    expected = np.packbits(mask, axis=1).reshape(-1)
    encoded = encode(tensor, "bitmask")
    assert encoded.parts["bitmask"].numpy().tolist() == expected.tolist()
    assert encode(torch.tensor([1.0] + [0.0] * 8 + [1.0]), "bitmask").parts["bitmask"].tolist() == [
        0x80,
        0x40,
    ]


def test_bitmask_row_offsets_let_one_row_decode_alone() -> None:
    tensor = make_tensor((4, 11), "half", torch.float16, seed=5)
    parts = encode(tensor, "bitmask").parts
    row, per_row = 2, (11 + 7) // 8
    start, stop = parts["row_offsets"][row : row + 2].tolist()
    bits = np.unpackbits(parts["bitmask"][row * per_row : (row + 1) * per_row].numpy(), count=11)
    rebuilt = torch.zeros(11, dtype=torch.float16)
    rebuilt[torch.from_numpy(bits.astype(bool))] = parts["values"][start:stop]
    assert torch.equal(rebuilt, tensor[row])


def test_index_dtypes_are_the_smallest_that_fit() -> None:
    narrow = encode(torch.ones(1, 32767), "csr")
    wide = encode(torch.ones(1, 32768), "csr")
    assert narrow.parts["col_indices"].dtype == torch.int16
    assert wide.parts["col_indices"].dtype == torch.int32
    assert narrow.parts["row_offsets"].dtype == torch.int32
    assert encode(torch.ones(3, 4), "coo").parts["indices"].dtype == torch.int32
    assert encode(torch.ones(3, 4), "bitmask").parts["row_offsets"].dtype == torch.int32


def test_layout_nbytes_switches_to_int64_for_huge_tensors() -> None:
    rows, cols, nnz = 2**16, 2**16, 1000  # 2**32 entries: past int32 positions
    assert layout_nbytes((rows, cols), torch.float16, nnz, "coo") == nnz * (8 + 2)
    assert layout_nbytes((rows, cols), torch.float16, nnz, "csr") == (rows + 1) * 8 + nnz * (4 + 2)
    assert layout_nbytes((rows, cols), torch.float16, nnz, "dense") == rows * cols * 2


# ------------------------------------------------------------------ corruption

# 4 x 10: row 1 empty, 10 columns leave 6 padding bits in each row's second byte.
BASE = torch.tensor(
    [
        [1.0, 0, 2, 0, 0, 0, 0, 0, 0, 3],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 4, 0, 0, 5, 0, 0, 0, 6, 0],
        [7, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
)


def test_non_contiguous_parts_decode_like_contiguous_ones() -> None:
    for layout in LAYOUTS:
        parts = encode(BASE, layout).parts
        strided = {name: torch.stack([p, p], dim=-1)[..., 0] for name, p in parts.items()}
        assert not all(p.is_contiguous() for p in strided.values())
        assert torch.equal(decode_parts(layout, BASE.shape, BASE.dtype, strided), BASE)


def _set(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def mutate(parts: dict) -> None:
        parts[name] = fn(parts[name].clone())

    return mutate


def _poke(name: str, index: int, value: int | float) -> Callable[[dict], None]:
    def poke(t: torch.Tensor) -> torch.Tensor:
        t[index] = value
        return t

    return _set(name, poke)


def _drop(name: str) -> Callable[[dict], None]:
    return lambda parts: parts.pop(name)


def _add(name: str) -> Callable[[dict], None]:
    return lambda parts: parts.update({name: torch.zeros(1)})


CORRUPTIONS = {
    # bitmask
    "bitmask-values-short": ("bitmask", _set("values", lambda t: t[:-1]), "row_offsets ends at"),
    "bitmask-bytes-short": ("bitmask", _set("bitmask", lambda t: t[:-1]), "has 7 entries"),
    "bitmask-padding-bit": ("bitmask", _poke("bitmask", 1, 0x40 | 0x01), "padding bits"),
    "bitmask-extra-bit": ("bitmask", _poke("bitmask", 2, 0x01), "set bits per row"),
    "bitmask-offsets-decrease": ("bitmask", _poke("row_offsets", 2, 1), "non-decreasing"),
    "bitmask-offsets-start": ("bitmask", _poke("row_offsets", 0, 1), "start at 0"),
    "bitmask-offsets-dtype": ("bitmask", _set("row_offsets", lambda t: t.long()), "dtype"),
    "bitmask-values-dtype": ("bitmask", _set("values", lambda t: t.half()), "dtype"),
    "bitmask-2d": ("bitmask", _set("bitmask", lambda t: t.reshape(4, 2)), "1-D"),
    "bitmask-missing": ("bitmask", _drop("row_offsets"), "missing parts"),
    "bitmask-extra": ("bitmask", _add("shape"), "unexpected parts"),
    # csr
    "csr-col-too-big": ("csr", _poke("col_indices", 2, 10), "out of range"),
    "csr-col-negative": ("csr", _poke("col_indices", 0, -1), "out of range"),
    "csr-col-duplicate": ("csr", _poke("col_indices", 1, 0), "strictly increasing"),
    "csr-col-unsorted": ("csr", _poke("col_indices", 4, 1), "strictly increasing"),
    "csr-offsets-decrease": ("csr", _poke("row_offsets", 1, 4), "non-decreasing"),
    "csr-offsets-total": ("csr", _poke("row_offsets", 4, 6), "ends at"),
    "csr-values-long": ("csr", _set("values", lambda t: torch.cat([t, t[:1]])), "entries"),
    "csr-cols-dtype": ("csr", _set("col_indices", lambda t: t.int()), "dtype"),
    "csr-missing": ("csr", _drop("col_indices"), "missing parts"),
    # coo
    "coo-index-too-big": ("coo", _poke("indices", 6, 40), "out of range"),
    "coo-index-negative": ("coo", _poke("indices", 0, -3), "out of range"),
    "coo-index-duplicate": ("coo", _poke("indices", 1, 0), "strictly increasing"),
    "coo-index-unsorted": ("coo", _poke("indices", 3, 35), "strictly increasing"),
    "coo-index-dtype": ("coo", _set("indices", lambda t: t.long()), "dtype"),
    "coo-values-short": ("coo", _set("values", lambda t: t[:-2]), "entries"),
    "coo-extra": ("coo", _add("row_offsets"), "unexpected parts"),
    "coo-not-a-tensor": ("coo", lambda parts: parts.update(indices=[0, 2, 9]), "torch.Tensor"),
    # dense
    "dense-shape": ("dense", _set("values", lambda t: t.reshape(10, 4)), "shape"),
    "dense-numel": ("dense", _set("values", lambda t: t[:3]), "entries"),
    "dense-dtype": ("dense", _set("values", lambda t: t.double()), "dtype"),
    "dense-missing": ("dense", _drop("values"), "missing parts"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupted_parts_raise_one_line_bundle_error(case: str) -> None:
    layout, corrupt, message = CORRUPTIONS[case]
    encoded = encode(BASE, layout)
    parts = dict(encoded.parts)
    assert torch.equal(decode_parts(layout, BASE.shape, BASE.dtype, parts), BASE)  # intact first
    corrupt(parts)
    for call in (
        lambda: decode_parts(layout, BASE.shape, BASE.dtype, parts),
        lambda: to_torch_sparse_csr(EncodedTensor(layout, tuple(BASE.shape), BASE.dtype, parts)),
    ):
        with pytest.raises(BundleError, match=message) as err:
            call()
        text = str(err.value)
        assert text.startswith(f"{layout} layout: ") and "\n" not in text


@pytest.mark.parametrize(
    ("layout", "shape", "dtype", "message"),
    [
        ("sparse", (4, 10), torch.float32, "unknown layout"),
        ("csr", (4, -10), torch.float32, "non-negative"),
        ("csr", (4, 10.0), torch.float32, "non-negative"),
        ("csr", 40, torch.float32, "not a sequence"),
        ("csr", (4, 10), torch.float64, "value dtype"),
        ("csr", (5, 10), torch.float32, "row_offsets' has 5 entries"),
        ("csr", (4, 9), torch.float32, "out of range"),
    ],
)
def test_inconsistent_metadata_is_rejected(layout, shape, dtype, message) -> None:
    parts = encode(BASE, "csr").parts
    with pytest.raises(BundleError, match=message):
        decode_parts(layout, shape, dtype, parts)


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31 - 1),
    which=st.integers(0, 2),
    value=st.integers(-(2**15), 2**15 - 1),
)
def test_random_single_value_corruption_never_escapes_as_another_error(
    layout: str, seed: int, which: int, value: int
) -> None:
    tensor = make_tensor((3, 12), "half", torch.float32, seed)
    parts = {name: t.clone() for name, t in encode(tensor, layout).parts.items()}
    name = sorted(parts)[which % len(parts)]
    target = parts[name].reshape(-1)
    if target.numel() == 0:
        return
    index = seed % target.numel()
    if parts[name].dtype == torch.uint8:
        value %= 256
    target[index] = value
    try:
        decoded = decode_parts(layout, tensor.shape, tensor.dtype, parts)
    except BundleError:
        return
    assert decoded.shape == tensor.shape  # accepted only when still self-consistent


# ----------------------------------------------------------- safetensors state


def test_state_round_trip_through_a_safetensors_file(tmp_path) -> None:
    weights = {
        "blocks.0.attn.qkv": make_tensor((12, 4), "half", torch.bfloat16, 1),
        "blocks.0.attn.qkv.bias": make_tensor((12,), "one", torch.float16, 2),
        "pos_embed": make_tensor((1, 5, 4), "full", torch.float32, 3),
    }
    manifest, state = {}, {}
    for (name, weight), layout in zip(weights.items(), ("bitmask", "csr", "coo"), strict=True):
        encoded = encode(weight, layout)
        flat = encoded_to_state(name, encoded)
        assert set(flat) == {f"{name}.{part}" for part in part_names(layout)}
        state.update(flat)
        manifest[name] = (layout, list(encoded.shape), dtype_to_str(encoded.dtype))
    save_file(state, tmp_path / "bundle.safetensors")
    loaded = load_file(tmp_path / "bundle.safetensors")
    for name, (layout, shape, dtype_name) in manifest.items():
        encoded = encoded_from_state(name, layout, shape, str_to_dtype(dtype_name), loaded)
        assert torch.equal(decode(encoded), weights[name])


def test_state_with_a_missing_key_names_the_tensor() -> None:
    state = encoded_to_state("head.weight", encode(BASE, "csr"))
    del state["head.weight.col_indices"]
    with pytest.raises(BundleError, match="head.weight.col_indices"):
        encoded_from_state("head.weight", "csr", BASE.shape, BASE.dtype, state)


# ---------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_names_round_trip(dtype: torch.dtype) -> None:
    assert str_to_dtype(dtype_to_str(dtype)) is dtype


@pytest.mark.parametrize("name", ["float64", "torch.float32", "int8", "", None, 32])
def test_unknown_dtype_names_are_rejected(name) -> None:
    with pytest.raises(BundleError, match="unknown dtype"):
        str_to_dtype(name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.bool])
def test_dtypes_off_the_allow_list_cannot_be_encoded(dtype: torch.dtype) -> None:
    with pytest.raises(BundleError, match="cannot be stored"):
        encode(torch.zeros(3, dtype=dtype))
