"""Every number in a bundle is distrusted: the manifest's hyper-parameters go through the
checkpoint validators before anything is built, the header's shapes are compared with
them before tensor data is read, and no weight may be NaN or Inf.

Each edit is re-signed (checksums recomputed), so it reaches the validators instead of
stopping at a checksum mismatch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mtlcompress.bundle.format as bundle_format
from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import export_bundle, load_bundle, save_bundle
from mtlcompress.errors import BundleError
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint

from .conftest import rewrite

INF, NAN = math.inf, math.nan


@pytest.fixture(scope="module")
def original(make_micro_bundle, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("untrusted") / "bundle.safetensors"
    save_bundle(make_micro_bundle(), path)
    return path.read_bytes()


@pytest.fixture
def saved(original, tmp_path) -> Path:
    path = tmp_path / "bundle.safetensors"
    path.write_bytes(original)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.fixture
def nothing_is_built_or_read(monkeypatch):
    """Fail the test if the loader builds a (meta) model or reads tensor data."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the loader built a model or read tensor data before refusing the file")
    monkeypatch.setattr(bundle_format, "backbone_tensor_shapes", forbidden)
    monkeypatch.setattr(bundle_format, "read_container_tensors", forbidden)


def set_backbone(field, value, *, where="both"):
    """Edit a backbone field at the top of the manifest, in every task's copy, or both."""
    def edit(tensors, manifest):
        if where in ("top", "both"):
            manifest["backbone"][field] = value
        if where in ("tasks", "both"):
            for entry in manifest["tasks"].values():
                entry["checkpoint"]["backbone"][field] = value
    return edit


def set_task_field(*keys, value):
    """Set ``manifest['tasks']['depth'][keys...] = value``."""
    def edit(tensors, manifest):
        node = manifest["tasks"]["depth"]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


BACKBONE_CASES = [
    ("num_heads", 0, "field 'num_heads' is 0, which is not in [1, 32]"),
    ("num_heads", -1, "field 'num_heads' is -1, which is not in [1, 32]"),
    ("patch_size", 0, "field 'patch_size' is 0, which is not in [1, 32]"),
    ("mlp_ratio", NAN, "field 'mlp_ratio' is nan, which is not in (0, 64]"),
    ("mlp_ratio", INF, "field 'mlp_ratio' is inf, which is not in (0, 64]"),
    ("mlp_ratio", -INF, "field 'mlp_ratio' is -inf, which is not in (0, 64]"),
    ("reg_tokens", -1, "field 'reg_tokens' is -1, which is not in [0, 256]"),
    ("depth", 10**6, "field 'depth' is 1000000, which is not in [1, 128]"),
    ("embed_dim", 10**9, "field 'embed_dim' is 1000000000, which is not in [1, 16384]"),
    ("img_size", 10**12, "field 'img_size' is 1000000000000, which is not in [1, 8192]"),
    ("img_size", [32, 10**12], "field 'img_size' is 1000000000000, which is not in [1, 8192]"),
    ("depth", True, "field 'depth' has the wrong type"),
    ("depth", "2", "field 'depth' has the wrong type"),
    ("init_values", INF, "field 'init_values' is inf, not a finite number"),
]


@pytest.mark.parametrize("where", ["top", "tasks"])
@pytest.mark.parametrize(("field", "value", "expected"), BACKBONE_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in BACKBONE_CASES])
def test_bad_backbone_number_is_one_line_before_anything_is_built(saved, nothing_is_built_or_read, where, field,
                                                                     value, expected):
    rewrite(saved, set_backbone(field, value, where=where))
    message = load_error(saved)
    assert expected in message
    assert ("manifest field 'backbone'" if where == "top" else ".checkpoint.backbone' is invalid") in message


HEAD_CASES = [
    (("checkpoint", "head", "hidden"), -1, "head field 'hidden' is -1, which is not in [1, 16384]"),
    (("checkpoint", "head", "hidden"), 10**9, "head field 'hidden' is 1000000000, which is not in [1, 16384]"),
    (("checkpoint", "head", "out_channels"), 0, "head field 'out_channels' is 0, which is not in [1, 4096]"),
    (("checkpoint", "head", "out_channels"), 10**9, "head field 'out_channels' is 1000000000, which is not in"),
    (("checkpoint", "head", "hidden"), 2.5, "head field 'hidden' must be an integer, found float"),
    (("checkpoint", "num_classes"), 10**9, "num_classes is 1000000000, which is not in [1, 4096]"),
    (("checkpoint", "metrics", "rmse"), "low", "'tasks.depth.checkpoint.metrics.rmse' must be a number"),
    (("activation", "task_thresholds", "blocks.0.attn.qkv"), INF, "must map layer names to finite non-negative"),
    (("activation", "temporal_thresholds", "blocks.0.attn.qkv"), NAN, "must map layer names to finite non-negative"),
    (("activation", "task_thresholds", "blocks.0.attn.qkv"), -1, "must map layer names to finite non-negative"),
    (("delta_density",), NAN, "'tasks.depth.delta_density' must be a number in [0, 1], got nan"),
    (("delta_density",), 2, "'tasks.depth.delta_density' must be a number in [0, 1], got 2"),
]


@pytest.mark.parametrize(("keys", "value", "expected"), HEAD_CASES, ids=[f"{k[-1]}={v!r}" for k, v, _ in HEAD_CASES])
def test_bad_task_number_is_one_line_before_anything_is_built(saved, nothing_is_built_or_read, keys, value, expected):
    rewrite(saved, set_task_field(*keys, value=value))
    assert expected in load_error(saved)


@pytest.mark.parametrize(("field", "value"), [("depth", 128), ("embed_dim", 16384), ("img_size", 8192)])
def test_large_but_valid_architecture_is_checked_against_the_header_before_reading_tensors(saved, monkeypatch,
                                                                                          field, value):
    # The numbers pass the range checks; the header (a micro model's tensors) does not fit them.
    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read before the header was compared with the architecture")
    monkeypatch.setattr(bundle_format, "read_container_tensors", forbidden)

    def edit(tensors, manifest):
        set_backbone(field, value)(tensors, manifest)
        for entry in manifest["tasks"].values():
            entry["delta"] = {}  # so the check that fails is the header's, not a delta's declared shape
            entry["delta_density"] = 0.0
        for name in [n for n in tensors if n.startswith("delta.")]:
            del tensors[name]
    rewrite(saved, edit)
    message = load_error(saved)
    assert ("missing" in message and "tensor(s)" in message) or "the manifest's architecture needs" in message


def test_json_nested_thousands_deep_is_one_line(saved):
    def deep(tensors, manifest):
        manifest["tasks"]["depth"]["provenance"]["notes"] = []
    rewrite(saved, deep)
    data = saved.read_bytes()
    at = data.index(b'\\"notes\\": []')  # the manifest sits JSON-escaped inside the header
    nested = b"[" * 100_000 + b"]" * 100_000
    header_len = int.from_bytes(data[:8], "little") + len(nested) - 2
    data = header_len.to_bytes(8, "little") + data[8:at] + b'\\"notes\\": ' + nested + data[at + 13:]
    saved.write_bytes(data)
    assert "nested too deeply" in load_error(saved)


# ------------------------------------------------------------- non-finite weights


def first_delta(manifest: dict, layout: str) -> str:
    return next(n for n, d in manifest["tasks"]["depth"]["delta"].items() if d["layout"] == layout)


def poison(tensor_name: str, value: float):
    def edit(tensors, manifest):
        tensors[tensor_name].view(-1)[0] = value
    return edit


@pytest.mark.parametrize(("tensor", "value"), [
    ("base.blocks.0.attn.qkv.weight", NAN),
    ("base.pos_embed", INF),
    ("head.depth.proj.weight", NAN),
    ("head.semseg.conv.bias", -INF),
])
def test_non_finite_base_or_head_weight_is_refused_naming_it(saved, tensor, value):
    rewrite(saved, poison(tensor, value))
    message = load_error(saved)
    assert f"tensor '{tensor}' holds NaN or Inf" in message


@pytest.mark.parametrize("layout", ["coo", "csr", "bitmask"])
def test_non_finite_delta_value_is_refused_naming_it(saved, layout):
    def edit(tensors, manifest):
        name = first_delta(manifest, layout)
        tensors[f"delta.depth.{name}.values"][0] = NAN  # still non-zero: nnz unchanged
    rewrite(saved, edit)
    message = load_error(saved)
    assert "tensor 'delta.depth." in message and "holds NaN or Inf" in message


def test_finite_base_and_delta_that_overflow_together_are_refused(saved):
    def edit(tensors, manifest):
        name = first_delta(manifest, "coo")
        index = int(tensors[f"delta.depth.{name}.indices"][0])
        tensors[f"base.{name}"].view(-1)[index] = 3e38
        tensors[f"delta.depth.{name}.values"][0] = 3e38
    rewrite(saved, edit)
    assert "+ delta.depth." in load_error(saved)


def test_save_refuses_a_non_finite_head(make_micro_bundle, tmp_path):
    bundle = make_micro_bundle()
    bundle.task("depth").head["proj.bias"][0] = NAN
    path = tmp_path / "b.safetensors"
    with pytest.raises(BundleError, match=r"tensor 'head.depth.proj.bias' holds NaN or Inf; no bundle was written"):
        save_bundle(bundle, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_save_refuses_a_non_finite_base_weight_or_delta(make_micro_bundle, tmp_path):
    bundle = make_micro_bundle()
    bundle.base_weights["norm.weight"][3] = INF
    with pytest.raises(BundleError, match=r"tensor 'base.norm.weight' holds NaN or Inf"):
        save_bundle(bundle, tmp_path / "b.safetensors")
    bundle = make_micro_bundle()
    bundle.task("depth").delta["norm.bias"][0] = NAN
    with pytest.raises(BundleError, match=r"tensor 'delta.depth.norm.bias' holds NaN or Inf"):
        save_bundle(bundle, tmp_path / "b.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_checkpoints_whose_difference_overflows(tmp_path):
    # Both checkpoints are finite (so each loads), but their difference is Inf in float32.
    info_a = CheckpointInfo(task="semseg", backbone=PRESETS["micro"], out_channels=3, num_classes=3)
    info_b = CheckpointInfo(task="depth", backbone=PRESETS["micro"], out_channels=1)
    a, b = build_model(info_a), build_model(info_b)
    with torch.no_grad():
        a.backbone.norm.weight[0] = 3e38
        b.backbone.norm.weight[0] = -3e38
    save_checkpoint(a, info_a, tmp_path / "a.safetensors")
    save_checkpoint(b, info_b, tmp_path / "b.safetensors")
    out = tmp_path / "bundle.safetensors"
    with pytest.raises(BundleError, match=r"tensor 'delta.depth.norm.weight' holds NaN or Inf; no bundle was written"):
        export_bundle(tmp_path / "a.safetensors", [tmp_path / "b.safetensors"], out)
    assert not out.exists()


def test_a_valid_bundle_still_loads(saved, make_micro_bundle):
    loaded = load_bundle(saved)
    assert isinstance(loaded, Bundle) and loaded.base_task == "semseg"
    assert list(loaded.base_weights) == list(make_micro_bundle().base_weights)
