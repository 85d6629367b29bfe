"""Half-precision bundles: one stored dtype for base, deltas and heads, recorded in the
manifest and checked on load; casting keeps each delta's sparsity and rounds each
task's weights once."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle.format import export_bundle, load_bundle, save_bundle
from mtlcompress.errors import BundleError
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint

from .conftest import read_manifest, rewrite

MICRO = PRESETS["micro"]

HALF = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", HALF)
def test_cast_keeps_delta_zeros_and_rounds_each_task_weight_once(make_micro_bundle, dtype):
    bundle = make_micro_bundle()
    half = bundle.cast(dtype)
    delta, cast_delta = bundle.task("depth").delta, half.task("depth").delta
    assert half.dtype == dtype and all(h.dtype == dtype for h in half.task("depth").head.values())
    for name, d in delta.items():
        assert not bool(cast_delta[name][d == 0].any()), name  # no new non-zeros: sparsity kept
    ulp = torch.finfo(dtype).eps
    for name, exact in bundle.task_weights("depth").items():
        # base + delta is the task weight up to two roundings of the larger of base and task.
        err = (half.task_weights("depth")[name].float() - exact).abs()
        scale = torch.maximum(exact.abs(), bundle.base_weights[name].abs())
        assert bool((err <= 2 * ulp * scale + torch.finfo(dtype).tiny).all()), name  # fp16: subnormals
    assert bundle.cast(torch.float32) is bundle


@pytest.mark.parametrize("dtype", HALF)
def test_half_bundle_round_trips_with_its_dtype_in_the_manifest(make_micro_bundle, tmp_path, dtype):
    bundle = make_micro_bundle()
    full, half = tmp_path / "fp32.safetensors", tmp_path / "half.safetensors"
    save_bundle(bundle, full)
    manifest = save_bundle(bundle.cast(dtype), half)
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    assert manifest["dtype"] == name and read_manifest(half)["dtype"] == name
    assert {d["dtype"] for d in manifest["tasks"]["depth"]["delta"].values()} == {name}
    loaded = load_bundle(half)
    assert loaded.dtype == dtype
    expected = bundle.cast(dtype)
    for task in bundle.tasks:
        got, want = loaded.task_weights(task), expected.task_weights(task)
        assert all(torch.equal(got[n], want[n]) for n in want)
    assert half.stat().st_size < 0.6 * full.stat().st_size  # every stored value takes 2 bytes, not 4


def test_a_bundle_mixing_dtypes_is_not_written(make_micro_bundle, tmp_path):
    bundle = make_micro_bundle()
    bundle.tasks["depth"].head = {k: v.half() for k, v in bundle.tasks["depth"].head.items()}
    with pytest.raises(BundleError, match="the bundle's weights are torch.float32"):
        save_bundle(bundle, tmp_path / "mixed.safetensors")
    assert not (tmp_path / "mixed.safetensors").exists()


def test_a_manifest_without_dtype_is_fp32_and_a_wrong_one_is_refused(make_micro_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(make_micro_bundle(), path)
    rewrite(path, lambda t, m: m.pop("dtype"))  # as written before half precision
    assert load_bundle(path).dtype == torch.float32
    rewrite(path, lambda t, m: m.update(dtype="bfloat16"))
    with pytest.raises(BundleError, match="the bundle's dtype is bfloat16"):  # deltas say float32
        load_bundle(path)
    rewrite(path, lambda t, m: m.update(dtype="float64"))
    with pytest.raises(BundleError, match="manifest field 'dtype' must be one of"):
        load_bundle(path)


def test_a_tensor_off_the_manifest_dtype_is_refused(make_micro_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(make_micro_bundle().cast(torch.bfloat16), path)
    rewrite(path, lambda t, m: t.update({"base.cls_token": t["base.cls_token"].float()}))
    with pytest.raises(BundleError, match="'base.cls_token' is float32, the manifest's dtype is bfloat16"):
        load_bundle(path)


def test_export_dtype(tmp_path):
    torch.manual_seed(0)
    paths = []
    for task, channels in (("semseg", 4), ("depth", 1)):
        info = CheckpointInfo(task=task, backbone=MICRO, out_channels=channels, head_hidden=8,
                              num_classes=channels if task == "semseg" else None)
        save_checkpoint(build_model(info), info, tmp_path / f"{task}.safetensors")
        paths.append(tmp_path / f"{task}.safetensors")
    summary = export_bundle(paths[0], paths[1:], tmp_path / "bf16.safetensors", dtype="bf16")
    assert summary["dtype"] == "bfloat16" and load_bundle(tmp_path / "bf16.safetensors").dtype == torch.bfloat16
    assert summary["totals"]["ratio_vs_one_checkpoint"] < 1.2  # two tasks in bf16: about one fp32 model
    assert export_bundle(paths[0], paths[1:], tmp_path / "fp32.safetensors")["dtype"] == "float32"
    with pytest.raises(BundleError, match="unknown bundle dtype 'int8'"):
        export_bundle(paths[0], paths[1:], tmp_path / "int8.safetensors", dtype="int8")
