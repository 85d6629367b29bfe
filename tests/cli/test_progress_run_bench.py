"""Progress on ``run`` (images and clip frames) and ``bench`` (timed and warm-up calls):
counted lines on stderr when it is not a terminal, never on stdout, and nothing at all
under ``--quiet`` or ``--json``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtlcompress.bundle.format import save_bundle
from mtlcompress.cli.main import app
from mtlcompress.report.benchmark import IMAGE_VARIANTS, VIDEO_VARIANTS
from mtlcompress.runtime.calibration import CACHE_DIR_ENV, default_cache_path, save_timings


@pytest.fixture(autouse=True)
def _fixed_timings(monkeypatch, tmp_path, fixed_timings):
    """Fixed kernel timings so the shared engine skips its calibration."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    save_timings(fixed_timings, default_cache_path("cpu"))


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory, make_micro_bundle):
    path = tmp_path_factory.mktemp("progress-run") / "micro.safetensors"
    save_bundle(make_micro_bundle(), path)
    return path


@pytest.fixture
def media(tmp_path):
    """Three photos and a four-frame clip folder."""
    rng = np.random.default_rng(0)
    photos, clip = tmp_path / "photos", tmp_path / "clip"
    for folder, count in ((photos, 3), (clip, 4)):
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return {"photos": photos, "clip": clip}


def counted(text: str, label: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(rf"{re.escape(label)}: (\d+)/(\d+)", text)]


def test_run_counts_images_and_clip_frames_on_stderr(bundle_file, media, tmp_path):
    result = CliRunner().invoke(app, ["run", str(bundle_file), str(media["photos"]), "--out", str(tmp_path / "out"),
                                      "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert counted(result.stderr, "run: images") == [(2, 3), (3, 3)]  # one line per batch of two
    assert not counted(result.stdout, "run: images")
    video = CliRunner().invoke(app, ["run", str(bundle_file), str(media["clip"]), "--video", "--out",
                                     str(tmp_path / "out-video")])
    assert video.exit_code == 0, video.output
    assert counted(video.stderr, "run: clip frames") == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_run_is_silent_under_json_and_quiet(bundle_file, media, tmp_path, flag):
    result = CliRunner().invoke(app, ["run", str(bundle_file), str(media["photos"]), str(media["clip"]), "--video",
                                      "--out", str(tmp_path / "out"), flag])
    assert result.exit_code == 0, result.output
    assert "run:" not in result.stderr
    if flag == "--json":
        assert json.loads(result.stdout)["images"] == 3 + 4


def test_bench_counts_every_call_on_stderr(bundle_file):
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--repeats", "1", "--warmup", "1", "--frames", "2"])
    assert result.exit_code == 0, result.output
    lines = counted(result.stderr, "bench")
    calls = 2 * (len(IMAGE_VARIANTS) + len(VIDEO_VARIANTS)) + 4  # rounds x variants + two profiled passes x 2
    assert lines and lines[-1] == (calls, calls)
    assert [done for done, _ in lines] == sorted({done for done, _ in lines})  # counts only go up
    assert not counted(result.stdout, "bench")


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_bench_is_silent_under_json_and_quiet(bundle_file, flag):
    result = CliRunner().invoke(app, ["bench", str(bundle_file), "--repeats", "1", "--warmup", "0", "--frames", "2",
                                      "--no-profile", flag])
    assert result.exit_code == 0, result.output
    assert "bench:" not in result.stderr and "benchmarking" not in result.stderr
    if flag == "--json":
        assert json.loads(result.stdout)["config"]["repeats"] == 1
