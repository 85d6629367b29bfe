"""``inspect_bundle`` and ``mtlcompress inspect``: every number checkable by hand on a
tiny bundle whose delta non-zeros and activation densities are known exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import load_bundle, save_bundle
from mtlcompress.bundle.layouts import layout_nbytes
from mtlcompress.cli.main import main
from mtlcompress.data.synth import CLASS_NAMES, generate_scenes
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.report.inspect import SCHEMA_VERSION, inspect_bundle
from mtlcompress.runtime.calibration import default_cache_path, save_timings
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

MICRO = PRESETS["micro"]
N, D, HIDDEN = 17, 32, 128  # micro tokens (16 patches + class token), width, mlp width
K = {"blocks.0.attn.qkv.weight": 7, "blocks.1.mlp.fc1.weight": 3, "blocks.0.norm1.weight": 2}
# A threshold no activation delta reaches: the measured density is exactly 0.
THRESHOLDS = {"blocks.0.attn.qkv": 1e9, "blocks.1.mlp.fc1": 1e9}
TOP_KEYS = {"schema", "mtlcompress_version", "bundle", "tasks", "totals", "activation_density_source",
            "assumed_density", "data", "flops_convention", "notes"}


@pytest.fixture(scope="module", autouse=True)
def _timings_cache(tmp_path_factory):
    """The shared engine reads kernel timings from a cache: give it fixed ones (no calibration)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTLCOMPRESS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        cost = LinearCost(0.0, 1e-9)
        save_timings(KernelTimings(dense=cost, token=cost, element=cost, sparse_weight=cost, device_name="test"),
                     default_cache_path("cpu"))
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """semseg base; depth = base + exactly K[name] non-zeros per tensor, huge thresholds."""
    folder = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=len(CLASS_NAMES), head_hidden=16,
                               num_classes=len(CLASS_NAMES), class_names=list(CLASS_NAMES), metrics={"miou": 42.0})
    base = build_model(base_info)
    save_checkpoint(base, base_info, folder / "semseg.safetensors")
    info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1, head_hidden=8, metrics={"rmse": 0.5},
                          sparsity={"activation": {"granularity": "token", "task_thresholds": THRESHOLDS,
                                                   "temporal_thresholds": THRESHOLDS}})
    model = build_model(info)
    weights = {k: v.clone() for k, v in base.backbone.state_dict().items()}
    for name, k in K.items():
        weights[name].view(-1)[:k] += 0.5
    model.backbone.load_state_dict(weights)
    save_checkpoint(model, info, folder / "depth.safetensors")
    bundle = Bundle.from_checkpoints(folder / "semseg.safetensors", [folder / "depth.safetensors"])
    save_bundle(bundle, folder / "b.safetensors")
    return folder / "b.safetensors"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, images=8, videos=2, frames=3, size=32)
    return root


def test_densities_bytes_and_flops_match_hand_computation(saved):
    report = inspect_bundle(load_bundle(saved), saved)
    assert report["schema"] == SCHEMA_VERSION and set(report) == TOP_KEYS
    depth = report["tasks"]["depth"]
    qkv = depth["layers"]["blocks.0.attn.qkv"]
    assert qkv["weight_nnz"] == 7 and qkv["weight_density"] == 7 / (3 * D * D)
    assert qkv["delta_bytes"] == layout_nbytes((3 * D, D), torch.float32, 7, qkv["layout"]["weight"])
    assert depth["layers"]["blocks.1.mlp.fc1"]["weight_density"] == 3 / (HIDDEN * D)
    assert depth["layers"]["blocks.1.attn.proj"]["weight_nnz"] == 0
    assert depth["other"]["norms"]["delta_nnz"] == 2
    assert depth["delta_nnz"] == sum(K.values())
    assert depth["delta_bytes"] == sum(layer["delta_bytes"] for layer in depth["layers"].values()) + sum(
        group["delta_bytes"] for group in depth["other"].values())
    # No data: density 1 assumed on the thresholded layers, and said so.
    assert report["activation_density_source"] == "assumed" and report["assumed_density"] == 1.0
    assert any("assume" in note for note in report["notes"])
    assert qkv["flops"]["bundle"] == 2 * 7 * N + 2 * N * D * 3 * D
    assert depth["layers"]["blocks.1.mlp.fc1"]["flops"]["bundle"] == 2 * 3 * N + 2 * N * D * HIDDEN
    assert depth["layers"]["blocks.0.mlp.fc1"]["flops"]["bundle"] == 2 * N * D * HIDDEN  # no threshold: exact
    totals = report["totals"]
    assert totals["bytes"]["bundle"] == sum(t["bytes"]["bundle"] for t in report["tasks"].values())
    assert totals["bytes"]["bundle"] < totals["bytes"]["independent"]
    assert totals["params"]["bundle"] == report["tasks"]["semseg"]["params"]["independent"] + sum(K.values()) + \
        depth["head_params"]
    assert report["bundle"]["file_bytes"] == saved.stat().st_size


def test_measured_densities_accuracy_and_paths_with_data(saved, data):
    report = inspect_bundle(load_bundle(saved), saved, data=data, max_images=2)
    assert report["activation_density_source"] == "measured" and report["assumed_density"] is None
    assert report["data"]["images"] == 2 and report["data"]["clip"] == "clip_000" and report["data"]["frames"] == 3
    depth = report["tasks"]["depth"]
    qkv = depth["layers"]["blocks.0.attn.qkv"]
    assert qkv["activation_density"] == 0.0 and qkv["temporal_density"] == 0.0
    assert depth["layers"]["blocks.0.mlp.fc1"]["activation_density"] is None  # no threshold
    assert qkv["flops"]["bundle"] == 2 * 7 * N  # density 0: only dW x_0 is left
    assert depth["flops"]["bundle"] == depth["flops"]["bundle_fixed"]
    assert depth["accuracy"]["original"] == {"rmse": 0.5} and "rmse" in depth["accuracy"]["bundle"]
    assert report["tasks"]["semseg"]["accuracy"]["original"] == {"miou": 42.0}
    if qkv["path"] is not None:  # only when the shared engine exposes layer_paths
        assert qkv["path"] in {"dense", "token", "element"}
        assert depth["layers"]["blocks.0.mlp.fc1"]["path"] == "exact"
    json.dumps(report, allow_nan=False)  # strict JSON: NaN metrics are null


# ------------------------------------------------------------------ CLI


def run_cli(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "inspect", *map(str, args)])
    main()


def test_cli_json_has_the_documented_keys_and_html_is_written(saved, tmp_path, monkeypatch, capsys):
    html = tmp_path / "out" / "report.html"
    run_cli(monkeypatch, saved, "--json", "--html", html)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert set(report) == TOP_KEYS and report["schema"] == SCHEMA_VERSION
    assert report["tasks"]["depth"]["layers"]["blocks.0.attn.qkv"]["weight_nnz"] == 7
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_tables_without_json(saved, monkeypatch, capsys):
    run_cli(monkeypatch, saved)
    out = capsys.readouterr().out
    assert "blocks.0.attn.qkv" in out and "depth" in out and "{" not in out


def test_corrupted_bundle_is_one_line_and_exit_2(saved, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.safetensors"
    raw = bytearray(saved.read_bytes())
    raw[-100:] = bytes(100)  # damage tensor bytes: the payload checksum must catch it
    broken.write_bytes(bytes(raw))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, broken)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert captured.out == ""
    # Under --json the same failure is one JSON object on stdout, nothing on stderr.
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, broken, "--json")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["error"] is True and error["code"] == "bundle" and "checksum" in error["message"]
    assert captured.err == ""
