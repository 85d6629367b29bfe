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
from mtlcompress.data.layouts import open_dataset
from mtlcompress.report.inspect import SCHEMA_VERSION, inspect_bundle
from mtlcompress.tasks.registry import get_task
from mtlcompress.runtime.calibration import default_cache_path, save_timings
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

MICRO = PRESETS["micro"]
N, D, HIDDEN = 17, 32, 128  # micro tokens (16 patches + class token), width, mlp width
K = {"blocks.0.attn.qkv.weight": 7, "blocks.1.mlp.fc1.weight": 3, "blocks.0.norm1.weight": 2}
# A threshold no activation delta reaches: the measured density is exactly 0.
THRESHOLDS = {"blocks.0.attn.qkv": 1e9, "blocks.1.mlp.fc1": 1e9}
TOP_KEYS = {"schema", "mtlcompress_version", "bundle", "tasks", "totals", "activation_density_source",
            "assumed_density", "data", "examples", "flops_convention", "notes"}


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


# ------------------------------------------------------------------ like against like


def _score(model: torch.nn.Module, data: Path, task: str, images: int) -> dict:
    """``model``'s metric on the first ``images`` val images, computed by hand."""
    dataset = open_dataset(data, split="val", tasks=[task], size=MICRO.img_size)
    metric = get_task(task).metric(None)
    with torch.inference_mode():
        batch = torch.stack([dataset[i]["image"] for i in range(images)])
        labels = torch.stack([dataset[i][task] for i in range(images)])
        metric.update(get_task(task).predict(model(batch)), labels)
    return {k: float(v) for k, v in metric.compute().items()}


def test_base_task_original_and_bundle_read_equal_on_the_same_images(saved, data):
    accuracy = inspect_bundle(load_bundle(saved), saved, data=data, max_images=3)["tasks"]["semseg"]["accuracy"]
    assert accuracy["original_from"] == "bundle"
    assert accuracy["original_same_images"] == accuracy["bundle"]  # identical computation, identical images
    assert accuracy["stored"] == accuracy["original"] == {"miou": 42.0}  # stored numbers kept, labelled


@pytest.fixture(scope="module")
def sparsified(tmp_path_factory) -> dict:
    """semseg base; depth sparsified from an original checkpoint that differs from it
    everywhere, whose path the sparsified checkpoint records as ``sparsity.source``."""
    folder = tmp_path_factory.mktemp("sparsified")
    torch.manual_seed(1)
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=len(CLASS_NAMES), head_hidden=16,
                               num_classes=len(CLASS_NAMES), metrics={"miou": 42.0})
    base = build_model(base_info)
    save_checkpoint(base, base_info, folder / "semseg.safetensors")
    original_info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1, head_hidden=8, metrics={"rmse": 0.7})
    original = build_model(original_info)
    save_checkpoint(original, original_info, folder / "depth.original.safetensors")
    info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1, head_hidden=8, metrics={"rmse": 0.9},
                          sparsity={"source": str(folder / "depth.original.safetensors"),
                                    "original_metrics": {"rmse": 0.7}, "stage": "weights"})
    model = build_model(info)
    weights = {k: v.clone() for k, v in base.backbone.state_dict().items()}
    weights["blocks.0.attn.qkv.weight"].view(-1)[:5] += 0.5
    model.backbone.load_state_dict(weights)
    model.head.load_state_dict(original.head.state_dict())
    save_checkpoint(model, info, folder / "depth.safetensors")
    save_bundle(Bundle.from_checkpoints(folder / "semseg.safetensors", [folder / "depth.safetensors"]),
                folder / "b.safetensors")
    return {"bundle": folder / "b.safetensors", "original": folder / "depth.original.safetensors",
            "original_model": original.eval()}


def test_sparsified_task_is_compared_with_its_pre_sparsification_checkpoint(sparsified, data):
    bundle = load_bundle(sparsified["bundle"])
    report = inspect_bundle(bundle, sparsified["bundle"], data=data, max_images=2, examples=1)
    accuracy = report["tasks"]["depth"]["accuracy"]
    assert accuracy["original_from"] == "checkpoint"
    # The example pictures come from the same two models.
    maps = report["examples"][0]["tasks"]["depth"]
    assert maps["original"] is not None and maps["original"] != maps["bundle"]
    assert accuracy["original_path"] == str(sparsified["original"])
    assert accuracy["original_same_images"] == pytest.approx(_score(sparsified["original_model"], data, "depth", 2))
    # Not the sparsified weights that Bundle.task_model rebuilds.
    assert accuracy["original_same_images"] != pytest.approx(_score(bundle.task_model("depth"), data, "depth", 2))
    assert accuracy["stored"] == {"rmse": 0.7} and accuracy["original"] == {"rmse": 0.9}


def test_missing_original_checkpoint_is_said_plainly(sparsified, data, tmp_path):
    moved = tmp_path / "b.safetensors"
    moved.write_bytes(sparsified["bundle"].read_bytes())
    bundle = load_bundle(moved)
    bundle.tasks["depth"].provenance["sparsity"]["source"] = str(tmp_path / "gone.safetensors")
    report = inspect_bundle(bundle, moved, data=data, max_images=2)
    accuracy = report["tasks"]["depth"]["accuracy"]
    assert accuracy["original_from"] == "stored" and accuracy["original_same_images"] is None
    assert accuracy["stored"] == {"rmse": 0.7}
    assert any("gone.safetensors not found" in note and "stored" in note for note in report["notes"])


def test_examples_hold_the_photo_and_both_maps_per_task(saved, data):
    import base64
    import io

    from PIL import Image

    assert inspect_bundle(load_bundle(saved), saved, data=data, max_images=2)["examples"] is None
    report = inspect_bundle(load_bundle(saved), saved, data=data, max_images=4, examples=2)
    examples = report["examples"]
    assert len(examples) == 2 and examples[0]["stem"] != examples[1]["stem"]
    for example in examples:
        assert set(example["tasks"]) == {"semseg", "depth"}
        for png in [example["image"], *(m for maps in example["tasks"].values() for m in maps.values())]:
            with Image.open(io.BytesIO(base64.b64decode(png))) as image:
                assert image.format == "PNG" and image.width >= MICRO.img_size[1]
    # The base task's original is the identical computation: identical pictures.
    assert examples[0]["tasks"]["semseg"]["bundle"] == examples[0]["tasks"]["semseg"]["original"]
    json.dumps(report, allow_nan=False)


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
