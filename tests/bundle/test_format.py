"""The bundle file: exact round trips, and one clear BundleError for every kind of damage."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mtlcompress.io.atomic as atomic
from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import load_bundle, payload_sha256, save_bundle
from mtlcompress.bundle.layouts import LAYOUTS, layout_nbytes
from mtlcompress.errors import BundleError
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint

from .conftest import rewrite

MICRO = PRESETS["micro"]
ACTIVATION = {"granularity": "token", "task_thresholds": {"blocks.0.attn.qkv": 0.15, "blocks.1.mlp.fc2": 0.05},
              "temporal_thresholds": {"blocks.0.attn.qkv": 0.3}}
# Per-weight delta density of the sparse sub-task, chosen so "auto" picks every layout:
# all entries -> dense, 30% -> bitmask, 3% -> csr, 2 entries -> coo; other weights unchanged.
DELTA_PLAN = {"blocks.0.attn.qkv.weight": 1.0, "blocks.0.mlp.fc1.weight": 0.3,
              "blocks.0.mlp.fc2.weight": 0.03, "blocks.1.attn.proj.bias": 2}


def sparse_variant(base: dict[str, torch.Tensor], plan: dict[str, float | int]) -> dict[str, torch.Tensor]:
    """``base`` plus non-zero deltas (magnitude >= 0.1, so none cancels) where ``plan`` says."""
    out = {}
    for name, w in base.items():
        rate = plan.get(name)
        if rate is None:
            out[name] = w.clone()
            continue
        if isinstance(rate, int):
            mask = (torch.arange(w.numel()) < rate).view_as(w)
        else:
            mask = torch.rand_like(w) < rate
        out[name] = w + mask * (torch.rand_like(w) * 0.5 + 0.1)
    return out


def make_checkpoints(folder: Path) -> dict[str, Path]:
    """semseg (base), depth (sparse delta, thresholds), normals (independently trained: dense)."""
    torch.manual_seed(0)
    paths = {task: folder / f"{task}.safetensors" for task in ("semseg", "depth", "normals")}
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=5, num_classes=5,
                               class_names=[f"class{i}" for i in range(5)], metrics={"miou": 0.5})
    base = build_model(base_info)
    save_checkpoint(base, base_info, paths["semseg"])
    depth_info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1, metrics={"rmse": 0.75},
                                training={"stage": "finetune", "steps": 10},
                                sparsity={"activation": ACTIVATION, "base": str(paths["semseg"])})
    depth = build_model(depth_info)
    depth.backbone.load_state_dict(sparse_variant(base.backbone.state_dict(), DELTA_PLAN))
    save_checkpoint(depth, depth_info, paths["depth"])
    normals_info = CheckpointInfo(task="normals", backbone=MICRO, out_channels=3, head_hidden=16)
    save_checkpoint(build_model(normals_info), normals_info, paths["normals"])
    return paths


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def bundle(sources) -> Bundle:
    return Bundle.from_checkpoints(sources["semseg"], [sources["depth"], sources["normals"]])


@pytest.fixture
def saved(bundle, tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "bundle.safetensors"
    return path, save_bundle(bundle, path)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def assert_same_bundle(a: Bundle, b: Bundle) -> None:
    assert (a.backbone, a.base_task, list(a.tasks)) == (b.backbone, b.base_task, list(b.tasks))
    for task in a.tasks:
        wa, wb = a.task_weights(task), b.task_weights(task)
        assert list(wa) == list(wb)
        assert all(same_bits(wa[n], wb[n]) for n in wa), task
        ha, hb = a.task(task).head, b.task(task).head
        assert list(ha) == list(hb) and all(same_bits(ha[n], hb[n]) for n in ha)
        assert a.task(task).activation == b.task(task).activation
        assert a.task(task).info == b.task(task).info
        assert a.task(task).provenance == b.task(task).provenance


# ------------------------------------------------------------------ round trips


def test_round_trip_is_bit_identical(bundle, saved):
    path, manifest = saved
    loaded = load_bundle(path)
    assert_same_bundle(bundle, loaded)
    assert load_bundle(path).task("depth").activation.task_thresholds == ACTIVATION["task_thresholds"]
    assert loaded.task("semseg").info.class_names == [f"class{i}" for i in range(5)]
    assert loaded.task("normals").info.head_hidden == 16


def test_round_trip_reproduces_the_sparse_source_checkpoint(sources, saved):
    loaded = load_bundle(saved[0])
    source = load_file(sources["depth"])
    weights = loaded.task_weights("depth")
    # base + (w - base) need not round back to w in float32; the sparse support must.
    for name, w in weights.items():
        assert torch.allclose(w, source[f"backbone.{name}"], rtol=0, atol=1e-6), name
    assert all(torch.equal(h, source[f"head.{n}"]) for n, h in loaded.task("depth").head.items())


def test_manifest_describes_every_delta(bundle, saved):
    path, manifest = saved
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["document"]) == manifest
        names = set(handle.keys())
    assert manifest["task_order"] == ["semseg", "depth", "normals"] and manifest["base_task"] == "semseg"
    depth = manifest["tasks"]["depth"]
    assert {n: d["layout"] for n, d in depth["delta"].items()} == {
        "blocks.0.attn.qkv.weight": "dense", "blocks.0.mlp.fc1.weight": "bitmask",
        "blocks.0.mlp.fc2.weight": "csr", "blocks.1.attn.proj.bias": "coo"}
    assert set(LAYOUTS) == {d["layout"] for d in depth["delta"].values()}
    assert depth["delta"]["blocks.1.attn.proj.bias"] == {"layout": "coo", "shape": [32], "dtype": "float32",
                                                          "nnz": 2, "bytes": 16}
    assert depth["delta_density"] == pytest.approx(bundle.delta_density("depth"))
    assert depth["activation"] == ACTIVATION and depth["checkpoint"]["metrics"] == {"rmse": 0.75}
    assert depth["provenance"]["path"].endswith("depth.safetensors")
    assert manifest["tasks"]["semseg"]["delta"] == {} and manifest["tasks"]["semseg"]["delta_density"] == 0
    # Unchanged weights are not stored at all; the independently trained task is all dense.
    assert not any(n.startswith("delta.depth.blocks.1.mlp") for n in names)
    assert {d["layout"] for d in manifest["tasks"]["normals"]["delta"].values()} == {"dense"}
    assert manifest["payload_sha256"] == payload_sha256(load_file(path))


def test_all_zero_deltas_are_skipped(bundle, tmp_path):
    zeroed = Bundle(bundle.backbone, bundle.base_task, bundle.base_weights, dict(bundle.tasks))
    depth = bundle.task("depth")
    zeroed.tasks["depth"] = type(depth)(depth.info, depth.head, {**depth.delta, "norm.weight": torch.zeros(32)},
                                        depth.activation, depth.provenance)
    manifest = save_bundle(zeroed, tmp_path / "b.safetensors")
    assert "norm.weight" not in manifest["tasks"]["depth"]["delta"]
    loaded = load_bundle(tmp_path / "b.safetensors")
    assert all(same_bits(w, loaded.task_weights("depth")[n]) for n, w in zeroed.task_weights("depth").items())


def test_unsparsified_bundle_round_trips(sources, tmp_path):
    dense = Bundle.from_checkpoints(sources["depth"], [sources["normals"]])
    save_bundle(dense, tmp_path / "dense.safetensors")
    assert_same_bundle(dense, load_bundle(tmp_path / "dense.safetensors"))


def test_bundle_is_smaller_than_its_sources(sources, saved):
    source_bytes = sum(p.stat().st_size for p in sources.values())
    assert saved[0].stat().st_size < source_bytes


# ------------------------------------------------------------------ corruption


def header_span(path: Path) -> tuple[int, int]:
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8, 8 + length


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def load_error(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "file not found" in load_error(tmp_path / "nope.safetensors")


def test_flipped_byte_in_header_length(saved):
    path, _ = saved
    flip_byte(path, 3, 0x40)
    assert "not a readable safetensors file" in load_error(path)


def test_flipped_byte_in_tensor_table(saved):
    path, _ = saved
    start, end = header_span(path)
    header = path.read_bytes()[start:end]
    flip_byte(path, start + header.index(b'"data_offsets":[') + 17, 0x04)  # first offset digit
    assert "not a readable safetensors file" in load_error(path)


def test_flipped_byte_in_payload_fails_the_checksum(saved):
    path, _ = saved
    flip_byte(path, path.stat().st_size - 5)
    assert "payload checksum mismatch" in load_error(path)


def test_edited_number_in_manifest_fails_the_checksum(saved):
    path, _ = saved
    data = path.read_bytes()
    at = data.index(b'0.15')  # the depth task's qkv threshold: still valid JSON when changed
    path.write_bytes(data[:at] + b'0.25' + data[at + 4:])
    assert "manifest checksum mismatch" in load_error(path)


def test_broken_manifest_json(saved):
    path, _ = saved
    data = path.read_bytes()
    at = data.index(b'\\"base_task\\": ')
    path.write_bytes(data[:at] + b'\\"base_task\\"# ' + data[at + 15:])
    assert "metadata JSON is corrupt" in load_error(path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.001])
def test_truncated_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert "not a readable safetensors file" in load_error(path)


def test_newer_format_version(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m.update(format_version=2), version=2)
    message = load_error(path)
    assert "newer mtlcompress" in message and "upgrade" in message


def test_single_task_checkpoint_is_not_a_bundle(sources):
    message = load_error(sources["depth"])
    assert "'mtlcompress.single_task'" in message and "mtlcompress export" in message


def test_schema_rejects_bad_fields_before_use(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m["tasks"]["depth"]["delta"]["blocks.0.mlp.fc2.weight"].update(nnz=-3))
    assert "'tasks.depth.delta.blocks.0.mlp.fc2.weight.nnz' must be a non-negative integer" in load_error(path)

def test_schema_rejects_unknown_top_level_keys(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m.update(surprise=1))
    assert "unknown key 'surprise'" in load_error(path)


def test_base_task_must_be_among_the_tasks(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m.update(base_task="edges"))
    assert "'edges' is not among the tasks" in load_error(path)


def test_schema_rejects_unknown_tasks_and_layouts(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m.update(task_order=["semseg", "depth", "nope"]))
    assert "unknown task 'nope'" in load_error(path)
    rewrite(path, lambda t, m: (m.update(task_order=["semseg", "depth", "normals"]),
                                m["tasks"]["depth"]["delta"]["blocks.0.mlp.fc2.weight"].update(layout="zip")))
    assert "must be one of dense, bitmask, csr, coo" in load_error(path)


def test_duplicate_tasks_are_rejected(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m["task_order"].append("depth"))
    assert "'task_order' has duplicate entries" in load_error(path)


def test_sparse_index_out_of_range_reaches_the_layout_validator(saved):
    path, _ = saved

    def bad_index(tensors, manifest):
        tensors["delta.depth.blocks.1.attn.proj.bias.indices"][-1] = 32  # one past the end
    rewrite(path, bad_index)
    message = load_error(path)
    assert "'delta.depth.blocks.1.attn.proj.bias'" in message and "out of range" in message


def test_csr_column_out_of_range(saved):
    path, _ = saved
    rewrite(path, lambda t, m: t["delta.depth.blocks.0.mlp.fc2.weight.col_indices"].__setitem__(0, 999))
    assert "column index out of range" in load_error(path)


def test_extra_tensor(saved):
    path, _ = saved
    rewrite(path, lambda t, m: t.update({"head.depth.sneaky": torch.zeros(2)}))
    assert "unexpected tensor(s), e.g. 'head.depth.sneaky'" in load_error(path)


def test_missing_tensor(saved):
    path, _ = saved
    rewrite(path, lambda t, m: t.pop("delta.depth.blocks.0.mlp.fc1.weight.bitmask"))
    assert "missing 1 tensor(s), e.g. 'delta.depth.blocks.0.mlp.fc1.weight.bitmask'" in load_error(path)


def test_wrong_base_shape(saved):
    path, _ = saved
    rewrite(path, lambda t, m: t.update({"base.norm.bias": torch.zeros(33)}))
    assert "tensor 'base.norm.bias' has shape (33,), the manifest's architecture needs (32,)" in load_error(path)


def test_wrong_head_shape(saved):
    path, _ = saved
    rewrite(path, lambda t, m: t.update({"head.normals.conv.bias": torch.zeros(17)}))
    assert "tensor 'head.normals.conv.bias' has shape (17,), the manifest's architecture needs (16,)" in (
        load_error(path))


def test_wrong_dtype(saved):
    path, _ = saved
    rewrite(path, lambda t, m: t.update({"head.depth.conv.bias": t["head.depth.conv.bias"].double()}))
    assert "tensor 'head.depth.conv.bias' is float64, the manifest's dtype is float32" in load_error(path)


def test_huge_declared_delta_shape_is_refused_before_allocating(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m["tasks"]["depth"]["delta"]["blocks.1.attn.proj.bias"].update(
        shape=[2**40], bytes=layout_nbytes([2**40], torch.float32, 2, "coo")))
    assert "declares shape (1099511627776,), the backbone weight is (32,)" in load_error(path)


@pytest.mark.parametrize("field", ["nnz", "shape", "bytes"])
def test_schema_refuses_minus_one_in_a_delta_entry(saved, field):
    path, _ = saved
    entry = "tasks.depth.delta.blocks.1.attn.proj.bias"
    rewrite(path, lambda t, m: m["tasks"]["depth"]["delta"]["blocks.1.attn.proj.bias"].update(
        {field: [-1] if field == "shape" else -1}))
    where = f"{entry}.shape[0]" if field == "shape" else f"{entry}.{field}"
    assert f"'{where}' must be a non-negative integer, got -1" in load_error(path)


def test_more_non_zeros_than_entries_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m["tasks"]["depth"]["delta"]["blocks.1.attn.proj.bias"].update(
        nnz=33, bytes=layout_nbytes([32], torch.float32, 33, "coo")))
    assert "nnz' is 33, more than the 32 entries of the tensor" in load_error(path)


def test_a_delta_for_the_base_task_is_refused(saved):
    path, _ = saved

    def give_the_base_a_delta(tensors, manifest):
        name = "blocks.1.attn.proj.bias"
        manifest["tasks"]["semseg"]["delta"][name] = dict(manifest["tasks"]["depth"]["delta"][name])
        for part in ("indices", "values"):
            tensors[f"delta.semseg.{name}.{part}"] = tensors[f"delta.depth.{name}.{part}"].clone()
    rewrite(path, give_the_base_a_delta)
    assert "'tasks.semseg.delta' must be empty for the base task" in load_error(path)


def test_task_order_must_name_the_same_tasks(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m.update(task_order=["semseg", "edges", "normals"]))
    assert "'task_order' lists ['edges', 'normals', 'semseg'] but 'tasks' has ['depth', 'normals', 'semseg']" in (
        load_error(path))


def test_a_task_entry_must_hold_its_own_tasks_checkpoint(saved):
    path, _ = saved
    rewrite(path, lambda t, m: m["tasks"]["depth"]["checkpoint"].update(task="edges"))  # also one channel
    assert "'tasks.depth.checkpoint.task' is 'edges'" in load_error(path)


def test_delta_dtype_must_be_its_base_weights(saved):
    path, _ = saved

    def half(tensors, manifest):
        entry = manifest["tasks"]["depth"]["delta"]["blocks.1.attn.proj.bias"]
        key = "delta.depth.blocks.1.attn.proj.bias.values"
        tensors[key] = tensors[key].half()
        entry.update(dtype="float16", bytes=layout_nbytes(entry["shape"], torch.float16, entry["nnz"], "coo"))
    rewrite(path, half)
    assert "is float16, the bundle's dtype is float32" in load_error(path)


def test_delta_density_must_be_exactly_the_writers(saved):
    path, manifest = saved
    density = manifest["tasks"]["depth"]["delta_density"]
    rewrite(path, lambda t, m: m["tasks"]["depth"].update(delta_density=density * 1.001))
    assert "task 'depth' delta_density disagrees with its deltas" in load_error(path)


def test_delta_nnz_must_match_its_parts(saved):
    path, _ = saved

    def lie(tensors, manifest):
        entry = manifest["tasks"]["depth"]["delta"]["blocks.0.attn.qkv.weight"]
        tensors["delta.depth.blocks.0.attn.qkv.weight.values"][0, :5] = 0
        entry["nnz"] = 3072  # the dense values now hold 3067 non-zeros
    rewrite(path, lie)
    assert "has 3067 non-zeros, the manifest says 3072" in load_error(path)


# -------------------------------------------------------------------- atomicity


def test_failed_save_keeps_the_previous_file(bundle, saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def dies_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(atomic, "save_file", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(bundle, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    load_bundle(path)
