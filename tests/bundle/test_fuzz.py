"""Fuzzing the bundle reader: a damaged file loads as the original or raises BundleError.

Never a panic from safetensors' Rust code, a JSON traceback, an IndexError from a bad
sparse index, or a silently different bundle.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import load_bundle, save_bundle
from mtlcompress.errors import BundleError
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint

MICRO = PRESETS["micro"]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[bytes, Bundle, int, Path]:
    """A micro bundle (a base + a sparse sub-task with thresholds), its bytes and header size."""
    folder = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=3, num_classes=3)
    base = build_model(base_info)
    save_checkpoint(base, base_info, folder / "semseg.safetensors")
    sub_info = CheckpointInfo(task="edges", backbone=MICRO, out_channels=1, head_hidden=8, sparsity={
        "activation": {"granularity": "token", "task_thresholds": {"blocks.1.mlp.fc1": 0.1},
                       "temporal_thresholds": {}}})
    sub = build_model(sub_info)
    weights = base.backbone.state_dict()
    for i, (name, w) in enumerate(weights.items()):  # a mix of dense, bitmask, csr and coo deltas
        rate = (0.0, 1.0, 0.3, 0.03, 2 / w.numel())[i % 5]
        weights[name] = w + (torch.rand_like(w) < rate) * (torch.rand_like(w) + 0.1)
    sub.backbone.load_state_dict(weights)
    save_checkpoint(sub, sub_info, folder / "edges.safetensors")
    bundle = Bundle.from_checkpoints(folder / "semseg.safetensors", [folder / "edges.safetensors"])
    path = folder / "bundle.safetensors"
    save_bundle(bundle, path)
    data = path.read_bytes()
    return data, load_bundle(path), 8 + struct.unpack("<Q", data[:8])[0], folder


def identical(a: Bundle, b: Bundle) -> bool:
    def bits(t: torch.Tensor) -> tuple:
        return t.dtype, tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()
    if (a.backbone, a.base_task, list(a.tasks)) != (b.backbone, b.base_task, list(b.tasks)):
        return False
    for task in a.tasks:
        ta, tb = a.task(task), b.task(task)
        if (ta.info, ta.activation, ta.provenance) != (tb.info, tb.activation, tb.provenance):
            return False
        for ours, theirs in ((a.task_weights(task), b.task_weights(task)), (ta.head, tb.head)):
            if list(ours) != list(theirs) or any(bits(ours[n]) != bits(theirs[n]) for n in ours):
                return False
    return True


# A mutation is a function of (data, header_end) -> damaged data.
def bit_flips(anywhere: bool) -> st.SearchStrategy:
    @st.composite
    def strategy(draw):
        flips = draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=3))

        def mutate(data: bytes, header_end: int) -> bytes:
            out = bytearray(data)
            span = len(data) if anywhere else header_end
            for where, bit in flips:
                out[int(where * span)] ^= 1 << bit
            return bytes(out)
        return mutate
    return strategy()


@st.composite
def truncations(draw):
    keep = draw(st.floats(0, 1, exclude_max=True))
    return lambda data, header_end: data[: int(keep * len(data))]


@st.composite
def header_edits(draw):
    """Insert, delete or overwrite a few bytes inside the header (JSON and length prefix)."""
    where = draw(st.floats(0, 1, exclude_max=True))
    cut = draw(st.integers(0, 4))
    new = draw(st.binary(min_size=0, max_size=4) | st.sampled_from([b'"', b"{", b"}", b"\\", b",", b"9", b"-1"]))

    def mutate(data: bytes, header_end: int) -> bytes:
        at = int(where * header_end)
        return data[:at] + new + data[at + cut:]
    return mutate


@st.composite
def digit_edits(draw):
    """Change one digit in the header: the JSON stays valid, a number silently changes."""
    which = draw(st.floats(0, 1, exclude_max=True))
    step = draw(st.integers(1, 9))

    def mutate(data: bytes, header_end: int) -> bytes:
        digits = [i for i in range(8, header_end) if 48 <= data[i] <= 57]
        at = digits[int(which * len(digits))]
        return data[:at] + bytes([48 + (data[at] - 48 + step) % 10]) + data[at + 1:]
    return mutate


MUTATIONS = st.one_of(bit_flips(anywhere=False), bit_flips(anywhere=True), truncations(), header_edits(),
                      digit_edits())


@settings(max_examples=300, deadline=None)
@given(mutate=MUTATIONS)
def test_damaged_bundle_loads_identically_or_raises_bundle_error(original, mutate):
    data, bundle, header_end, folder = original
    path = folder / "damaged.safetensors"
    path.write_bytes(mutate(data, header_end))
    try:
        loaded = load_bundle(path)
    except BundleError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert identical(loaded, bundle)


def test_the_fuzz_oracle_can_tell_bundles_apart(original):
    data, bundle, _, folder = original
    path = folder / "copy.safetensors"
    path.write_bytes(data)
    changed = load_bundle(path)
    assert identical(changed, bundle)
    changed.task("edges").activation.task_thresholds["blocks.1.mlp.fc1"] = 0.2
    assert not identical(changed, bundle)
