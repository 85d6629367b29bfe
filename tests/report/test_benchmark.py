"""The benchmark report: every documented key is there, ratios are ratios of the
medians, the profiled breakdown accounts for the profiled call, and run_all's
markdown writer touches only its own section. No timing assertions."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.report.benchmark import (
    FRAME_KINDS,
    IMAGE_VARIANTS,
    RATIOS,
    VIDEO_VARIANTS,
    benchmark_bundle,
    static_clip,
    summarize_samples,
    synthetic_images,
)
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.shared_engine import PROFILE_KINDS

MICRO = PRESETS["micro"]
LAYERS = shared_linear_names(MICRO.depth)
SUB_TASKS = (("depth", 1), ("normals", 3))  # the micro bundle (conftest) with two sub-tasks
RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


@pytest.fixture(scope="module")
def result(make_micro_bundle, fixed_timings):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = synthetic_images(2, MICRO.img_size)
        frames = static_clip(3, MICRO.img_size)
        yield benchmark_bundle(make_micro_bundle(SUB_TASKS), images, frames, repeats=2, warmup=1, timings=fixed_timings,
                               policy=KeyframePolicy(keyframe_every=16))
    finally:
        torch.set_num_threads(previous)


def test_result_has_every_documented_key(result):
    assert {"environment", "config", "images", "video", "video_frames", "ratios", "speedup", "network_plan",
            "stream_plan", "profile", "activation_density", "layer_paths", "flops"} <= set(result)
    env = result["environment"]
    assert {"torch", "threads", "device", "device_name", "cpu_model"} <= set(env)
    assert env["torch"] == torch.__version__ and env["threads"] == 1
    assert set(result["images"]) == set(IMAGE_VARIANTS) and set(result["video"]) == set(VIDEO_VARIANTS)
    for section in ("images", "video"):
        for stats in result[section].values():
            assert stats["repeats"] == 2 and len(stats["samples_s"]) == 2
            assert stats["min_s"] <= stats["q1_s"] <= stats["median_s"] <= stats["q3_s"] <= stats["max_s"]
    assert result["config"]["batch"] == 2 and result["config"]["frames"] == 3 and result["config"]["keyframes"] == 1
    assert result["images"]["shared"]["per_item_s"] == pytest.approx(result["images"]["shared"]["median_s"] / 2)


def test_stream_frames_are_timed_by_kind(result):
    # 3 frames, keyframe every 16: one keyframe and two delta frames per timed stream.
    frames = result["video_frames"]
    assert set(frames) == {"keyframe", "delta"} and set(FRAME_KINDS) == {"keyframe", "delta", "per-task"}
    assert frames["keyframe"]["repeats"] == 2 and frames["delta"]["repeats"] == 4
    # Every timed frame lies inside a timed stream call.
    frame_total = sum(sum(frames[kind]["samples_s"]) for kind in frames)
    assert 0 < frame_total <= sum(result["video"]["shared_stream"]["samples_s"])


def test_ratios_are_ratios_of_medians(result):
    for section, pairs in RATIOS.items():
        assert set(result["ratios"][section]) == {f"{a}/{b}" for a, b in pairs}
        for a, b in pairs:
            expected = result[section][a]["median_s"] / result[section][b]["median_s"]
            assert math.isclose(result["ratios"][section][f"{a}/{b}"], expected, rel_tol=1e-12)


def test_speedup_is_against_the_t_models_beside_the_dense_engine(result):
    for section in ("images", "video"):
        ratios = result["ratios"][section]
        assert result["speedup"][section]["vs_models"] == ratios[f"independent/{'shared' if section == 'images' else 'shared_stream'}"]
        assert result["speedup"][section]["vs_dense"] == ratios[f"dense/{'shared' if section == 'images' else 'shared_stream'}"]
    # Given timings fix the prices: the network choice is priced, the stream never falls back.
    assert result["network_plan"]["path"] == "shared" and result["network_plan"]["source"] == "priced"
    assert result["stream_plan"]["mode"] == "temporal"


def test_profile_breakdown_accounts_for_the_profiled_call(result):
    for section in ("images", "video"):
        profile = result["profile"][section]
        # The blocks of every task run in lockstep (images; video frames of token-granularity
        # tasks), timed as "all tasks".
        assert set(profile["seconds"]) == {"base", "sub-tasks", "all tasks"}
        assert set(profile["by_kind"]) == set(PROFILE_KINDS)
        per_role = sum(sum(kinds.values()) for kinds in profile["seconds"].values())
        assert profile["sum_s"] == pytest.approx(per_role)
        assert sum(profile["by_kind"].values()) == pytest.approx(profile["sum_s"])
        # The timed parts lie inside the call; Python glue between them is the rest.
        assert 0.2 * profile["wall_s"] <= profile["sum_s"] <= profile["wall_s"] * 1.01


def test_densities_and_flops_are_reported(result):
    density = result["activation_density"]
    assert set(density["images"]["task"]) == {"depth", "normals"}
    assert set(density["images"]["task"]["depth"]) == set(LAYERS)
    assert all(0.0 <= d <= 1.0 for d in density["images"]["task_mean"].values())
    assert set(density["video"]["temporal"]) == {"semseg", "depth", "normals"}
    flops = result["flops"]["images"]
    assert flops["limit"] <= flops["bundle"] <= flops["independent"]
    assert flops["independent"] > flops["single_model"]
    stream = result["flops"]["video"]["stream"]
    assert stream["keyframe"] == flops["independent"]  # keyframes run every task exactly
    assert stream["mean_per_frame"] == pytest.approx((stream["keyframe"] + 2 * stream["non_keyframe"]) / 3)


def test_without_frames_there_is_no_video_section(make_micro_bundle, fixed_timings):
    torch.set_num_threads(1)
    out = benchmark_bundle(make_micro_bundle(SUB_TASKS), synthetic_images(1, MICRO.img_size), None, repeats=1,
                           warmup=0, timings=fixed_timings, profile=False)
    assert out["video"] == {} and out["ratios"]["video"] == {} and out["profile"] == {}
    assert set(out["images"]) == set(IMAGE_VARIANTS)


def test_summarize_samples_quartiles():
    stats = summarize_samples([4.0, 1.0, 3.0, 2.0], items=2)
    assert stats["median_s"] == 2.5 and stats["min_s"] == 1.0 and stats["max_s"] == 4.0
    assert stats["q1_s"] == 1.75 and stats["q3_s"] == 3.25 and stats["per_item_s"] == 1.25


def test_static_clip_is_deterministic_and_shaped():
    a, b = static_clip(2, 32, seed=3), static_clip(2, 32, seed=3)
    assert len(a) == 2 and a[0].shape == (1, 3, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(RUN_ALL.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RUN_ALL.parent))
    return module


def test_markdown_writer_replaces_only_its_section(run_all, tmp_path):
    doc = tmp_path / "benchmarks.md"
    before = "# Benchmarks\n\nThe lead's text.\n\n"
    after = "\n\n## Accuracy\n\nMore of the lead's text.\n"
    doc.write_text(f"{before}{run_all.START}\nold numbers\n{run_all.END}{after}")
    run_all.replace_section(doc, "new numbers\n")
    text = doc.read_text()
    assert text == f"{before}{run_all.START}\nnew numbers\n{run_all.END}{after}"
    run_all.replace_section(doc, "newer numbers")
    assert doc.read_text() == f"{before}{run_all.START}\nnewer numbers\n{run_all.END}{after}"


def test_markdown_writer_creates_or_appends_markers(run_all, tmp_path):
    fresh = tmp_path / "docs" / "benchmarks.md"
    run_all.replace_section(fresh, "numbers")
    assert f"{run_all.START}\nnumbers\n{run_all.END}" in fresh.read_text()
    other = tmp_path / "other.md"
    other.write_text("# Mine\n\nkeep me\n")
    run_all.replace_section(other, "numbers")
    assert other.read_text().startswith("# Mine\n\nkeep me\n")
    assert other.read_text().endswith(f"{run_all.START}\nnumbers\n{run_all.END}\n")
