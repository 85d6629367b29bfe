"""``mtlcompress bench``: a micro bundle file, synthetic or given inputs, JSON and tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlcompress.bundle.bundle import Bundle, BundleTask
from mtlcompress.bundle.format import save_bundle
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.cli.main import app
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.report.benchmark import IMAGE_VARIANTS, VIDEO_VARIANTS
from mtlcompress.runtime.calibration import CACHE_DIR_ENV, default_cache_path, save_timings
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

MICRO = PRESETS["micro"]
TIMINGS = KernelTimings(dense=LinearCost(1e-3, 1e-9), token=LinearCost(0.0, 1e-12), element=LinearCost(1.0, 1.0),
                        sparse_weight=LinearCost(0.0, 1e-12), device="cpu", dtype="float32", device_name="test")


def micro_bundle() -> Bundle:
    """semseg base and a depth sub-task = base + ~5% random delta, thresholds on every layer."""
    torch.manual_seed(0)
    layers = shared_linear_names(MICRO.depth)
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=4, head_hidden=8, num_classes=4)
    base = build_model(base_info)
    weights = {k: v.detach().clone() for k, v in base.backbone.state_dict().items()}
    info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1, head_hidden=8)
    delta = {k: (torch.rand(w.shape) < 0.05) * torch.randn(w.shape) * 0.05 for k, w in weights.items()}
    temporal = dict.fromkeys(layers, 0.05)
    return Bundle(backbone=MICRO, base_task="semseg", base_weights=weights, tasks={
        "semseg": BundleTask(base_info, dict(base.head.state_dict()), {},
                             ActivationSparsity(temporal_thresholds=temporal)),
        "depth": BundleTask(info, dict(build_model(info).head.state_dict()), delta, ActivationSparsity(
            task_thresholds=dict.fromkeys(layers, 0.02), temporal_thresholds=temporal))})


@pytest.fixture(autouse=True)
def _fixed_timings(monkeypatch, tmp_path):
    """Fixed kernel timings so the shared engine skips its calibration."""
    previous = torch.get_num_threads()
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    torch.set_num_threads(1)
    save_timings(TIMINGS, default_cache_path("cpu"))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "micro.safetensors"
    save_bundle(micro_bundle(), path)
    return path


def test_json_on_synthetic_inputs(bundle_file):
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--repeats", "2", "--warmup", "1", "--frames", "3",
                                      "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["images"]) == set(IMAGE_VARIANTS) and set(data["video"]) == set(VIDEO_VARIANTS)
    assert data["config"]["repeats"] == 2 and data["config"]["frames"] == 3
    assert set(data["video_frames"]) == {"keyframe", "delta"}
    assert data["environment"]["threads"] == 1
    assert data["inputs"].startswith("synthetic") and data["bundle"] == str(bundle_file)
    assert data["ratios"]["images"]["independent/shared"] == pytest.approx(
        data["images"]["independent"]["median_s"] / data["images"]["shared"]["median_s"])


def test_tables_on_given_images(bundle_file, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--input", str(folder), "--batch", "2",
                                      "--frames", "3", "--repeats", "1", "--warmup", "0", "--no-profile"])
    assert result.exit_code == 0, result.output
    for heading in ("images: ms per call", "video: ms per call", "single frames by kind", "ratios of medians",
                    "token-delta density"):
        assert heading in result.stdout
    assert "layer kind" not in result.stdout


def test_too_few_inputs_is_one_clear_error(bundle_file, tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--input", str(image), "--frames", "4"])
    assert result.exit_code != 0
    assert "--frames 4 needs at least 4 input images" in str(result.exception)
