"""``mtlcompress bench``: a micro bundle file, synthetic or given inputs, JSON and tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlcompress.bundle.format import save_bundle
from mtlcompress.cli.main import app
from mtlcompress.report.benchmark import IMAGE_VARIANTS, VIDEO_VARIANTS
from mtlcompress.runtime.calibration import CACHE_DIR_ENV, default_cache_path, save_timings

@pytest.fixture(autouse=True)
def _fixed_timings(monkeypatch, tmp_path, fixed_timings):
    """Fixed kernel timings so the shared engine skips its calibration."""
    previous = torch.get_num_threads()
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    torch.set_num_threads(1)
    save_timings(fixed_timings, default_cache_path("cpu"))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory, make_micro_bundle):
    path = tmp_path_factory.mktemp("bench") / "micro.safetensors"
    save_bundle(make_micro_bundle(), path)
    return path


def test_json_on_synthetic_inputs(bundle_file):
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--repeats", "2", "--warmup", "1", "--frames", "3",
                                      "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["images"]) == set(IMAGE_VARIANTS) and set(data["video"]) == set(VIDEO_VARIANTS)
    assert data["config"]["repeats"] == 2 and data["config"]["frames"] == 3
    assert data["video_frames"] and set(data["video_frames"]) <= {"keyframe", "delta", "per-task"}  # measured: may fall back
    assert data["environment"]["threads"] == 1
    assert data["inputs"].startswith("synthetic") and data["bundle"] == str(bundle_file)
    assert data["ratios"]["images"]["independent/shared"] == pytest.approx(
        data["images"]["independent"]["median_s"] / data["images"]["shared"]["median_s"])
    # The headline: against the T single-task models, beside the dense reference.
    for section, shared in (("images", "shared"), ("video", "shared_stream")):
        assert data["speedup"][section]["vs_models"] == pytest.approx(
            data[section]["independent"]["median_s"] / data[section][shared]["median_s"])
        assert data["speedup"][section]["vs_dense"] == pytest.approx(
            data[section]["dense"]["median_s"] / data[section][shared]["median_s"])
    assert data["network_plan"]["path"] in ("shared", "per-task")
    assert data["stream_plan"]["mode"] in ("temporal", "per-frame")
    assert "graph_peer" not in data  # a CPU device: no CUDA-graph peers unless asked for


def test_graph_peers_off_cuda_are_reported_unavailable(bundle_file):
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--repeats", "1", "--warmup", "0", "--frames", "0",
                                      "--no-profile", "--device", "cpu", "--graphs", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["graph_peer"]["reason"] == "unavailable (needs CUDA)"
    tables = CliRunner().invoke(app, ["bench", str(bundle_file), "--repeats", "1", "--warmup", "0", "--frames", "0",
                                      "--no-profile", "--device", "cpu", "--graphs"])
    assert tables.exit_code == 0 and "needs CUDA" in tables.output


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
                    "token-delta density", "faster than the T single-task models", "network path"):
        assert heading in result.stdout
    assert "layer kind" not in result.stdout


def test_too_few_inputs_is_one_clear_error(bundle_file, tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--input", str(image), "--frames", "4"])
    assert result.exit_code != 0
    assert "--frames 4 needs at least 4 input images" in str(result.exception)
