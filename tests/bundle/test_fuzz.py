"""Fuzzing the bundle reader: a damaged file loads as the original or raises BundleError.

Never a panic from safetensors' Rust code, a JSON traceback, an IndexError from a bad
sparse index, or a silently different bundle. A second fuzzer edits the manifest's
numbers and re-signs the file, as a forger would, so each edit reaches the validators:
the file is then refused with one line, or it is a bundle that works.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.checksums import manifest_sha256
from mtlcompress.bundle.format import FORMAT_NAME, load_bundle, save_bundle
from mtlcompress.errors import BundleError
from mtlcompress.io.container import DOCUMENT_KEY, FORMAT_KEY, VERSION_KEY
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.shared_engine import SharedEngine

from .conftest import read_manifest

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


# ------------------------------------------------------------- metadata numbers


def number_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """The key path of every number, bool and null in a JSON document."""
    if isinstance(node, dict):
        return [p for key, item in node.items() for p in number_paths(item, (*prefix, key))]
    if isinstance(node, list):
        return [p for i, item in enumerate(node) for p in number_paths(item, (*prefix, i))]
    return [prefix] if node is None or isinstance(node, (bool, int, float)) else []


DEEP = "__nested_deep__"  # replaced in the JSON text by brackets nested this many levels
SPECIAL_VALUES = [0, -1, 1, 2, 2**31, 2**63, 10**30, -(10**30), 0.5, -0.0, 1e-300, 1e308, -1e308,
                  math.nan, math.inf, -math.inf, True, False, None, "7", "", [], {}, [1], {"a": 1}]
REPLACEMENTS = st.one_of(st.sampled_from(SPECIAL_VALUES), st.integers(), st.floats(),
                         st.sampled_from([2, 50, 500, 5_000, 100_000]).map(lambda depth: (DEEP, depth)))


@pytest.fixture(scope="module")
def signed_parts(original) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[tuple]]:
    folder = original[3]
    tensors, manifest = load_file(folder / "bundle.safetensors"), read_manifest(folder / "bundle.safetensors")
    return tensors, manifest, number_paths(manifest)


def write_edited(path: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], where: tuple,
                 value: Any) -> None:
    """``manifest`` with the value at ``where`` replaced and its checksum recomputed where it can
    be (the tensors, and so the payload checksum, are unchanged)."""
    edited = copy.deepcopy(manifest)
    node = edited
    for key in where[:-1]:
        node = node[key]
    deep = isinstance(value, tuple) and value[0] == DEEP
    node[where[-1]] = DEEP if deep else value
    nested = "[" * value[1] + "]" * value[1] if deep else ""
    if deep and value[1] < 500:  # deeper than json's own encoder goes: left unsigned (stale checksum)
        node[where[-1]] = json.loads(nested)
    edited["manifest_sha256"] = manifest_sha256(edited)
    document = json.dumps(edited, sort_keys=True).replace(f'"{DEEP}"', nested)
    save_file(tensors, str(path), metadata={FORMAT_KEY: FORMAT_NAME, VERSION_KEY: "1", DOCUMENT_KEY: document})


@settings(max_examples=300, deadline=timedelta(seconds=20))  # the deadline catches hangs, not slowness
@given(data=st.data(), value=REPLACEMENTS)
def test_edited_metadata_number_is_refused_in_one_line_or_gives_a_working_bundle(original, signed_parts,
                                                                                 fixed_timings, data, value):
    tensors, manifest, paths = signed_parts
    where = data.draw(st.sampled_from(paths), label="where")
    folder = original[3]
    path = folder / "edited.safetensors"
    write_edited(path, tensors, manifest, where, value)
    try:
        loaded = load_bundle(path)
    except BundleError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    # Accepted: then it must be a bundle that saves and reloads identically; and if the
    # edit was to what the runtime reads (the thresholds), one that runs.
    again = folder / "resaved.safetensors"
    save_bundle(loaded, again)
    assert identical(load_bundle(again), loaded)
    if "activation" not in where:
        return
    frame = torch.rand(1, 3, *loaded.backbone.img_size)
    engine = SharedEngine(loaded, timings=fixed_timings)  # timings that put every thresholded layer to use
    for result in engine.stream([frame, frame * 0.9], KeyframePolicy(keyframe_every=2)):
        assert all(torch.isfinite(out).all() for out in result.outputs.values()), (where, value)


def test_the_number_fuzzer_reaches_the_validators(original, signed_parts):
    # Re-signed edits are not stopped by a checksum: an unchanged value loads, a bad one
    # is refused by the field's validator, a deep one by the JSON reader.
    tensors, manifest, paths = signed_parts
    path = original[3] / "edited.safetensors"
    assert ("backbone", "num_heads") in paths and ("tasks", "edges", "checkpoint", "head", "hidden") in paths
    write_edited(path, tensors, manifest, ("backbone", "num_heads"), 2)
    assert identical(load_bundle(path), original[1])
    write_edited(path, tensors, manifest, ("backbone", "num_heads"), 0)
    with pytest.raises(BundleError, match="'num_heads' is 0"):
        load_bundle(path)
    write_edited(path, tensors, manifest, ("tasks", "edges", "checkpoint", "head", "hidden"), (DEEP, 5_000))
    with pytest.raises(BundleError, match="nested too deeply"):
        load_bundle(path)
