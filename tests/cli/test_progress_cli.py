"""Progress on the long steps (``evaluate``, ``inspect --data``, the first-run kernel
calibration): counted lines on stderr when it is not a terminal, never on stdout, and
nothing at all under ``--quiet`` or ``--json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mtlcompress.bundle.format import export_bundle
from mtlcompress.cli.main import app, main
from mtlcompress.data.synth import CLASS_NAMES, generate_scenes
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.progress import progress_bar, progress_bars_disabled, progress_bars_enabled
from mtlcompress.runtime.calibration import calibrate, default_cache_path, save_timings
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

MICRO = PRESETS["micro"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Scenes at the micro size, a semseg and a depth checkpoint, and their bundle."""
    root = tmp_path_factory.mktemp("progress")
    generate_scenes(root / "data", images=12, videos=1, frames=3, size=MICRO.img_size)
    torch.manual_seed(0)
    paths = {"data": root / "data", "semseg": root / "semseg.safetensors", "depth": root / "depth.safetensors"}
    for task, channels, classes in (("semseg", len(CLASS_NAMES), len(CLASS_NAMES)), ("depth", 1, None)):
        info = CheckpointInfo(task=task, backbone=MICRO, out_channels=channels, num_classes=classes,
                              class_names=list(CLASS_NAMES) if classes else [])
        save_checkpoint(build_model(info), info, paths[task])
    paths["bundle"] = root / "bundle.safetensors"
    export_bundle(paths["semseg"], [paths["depth"]], paths["bundle"])
    return paths


@pytest.fixture
def fixed_timings_cache(tmp_path, monkeypatch):
    """The shared engine reads kernel timings from a cache: fixed ones, no calibration."""
    monkeypatch.setenv("MTLCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    cost = LinearCost(0.0, 1e-9)
    save_timings(KernelTimings(dense=cost, token=cost, element=cost, sparse_weight=cost, device_name="test"),
                 default_cache_path("cpu"))


def counted(text: str, label: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(rf"{re.escape(label)}: (\d+)/(\d+)", text)]


def test_evaluate_counts_images_on_stderr(workspace):
    result = CliRunner().invoke(app, ["evaluate", str(workspace["depth"]), "--data", str(workspace["data"]),
                                      "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    lines = counted(result.stderr, "evaluating depth")
    assert lines and lines[-1][0] == lines[-1][1] > 0
    assert not counted(result.stdout, "evaluating depth")


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_evaluate_is_silent_under_json_and_quiet(workspace, flag):
    result = CliRunner().invoke(app, ["evaluate", str(workspace["depth"]), "--data", str(workspace["data"]), flag])
    assert result.exit_code == 0, result.output
    assert "evaluating" not in result.stderr
    if flag == "--json":
        assert json.loads(result.stdout)["task"] == "depth"


def test_inspect_data_counts_images_and_frames(workspace, fixed_timings_cache):
    result = CliRunner().invoke(app, ["inspect", str(workspace["bundle"]), "--data", str(workspace["data"]),
                                      "--max-images", "3"])
    assert result.exit_code == 0, result.output
    done, total = counted(result.stderr, "inspect: images")[-1]
    assert done == total and 0 < total <= 3
    assert counted(result.stderr, "inspect: clip frames")[-1] == (3, 3)


def test_inspect_data_under_json_keeps_stdout_one_object(workspace, fixed_timings_cache):
    result = CliRunner().invoke(app, ["inspect", str(workspace["bundle"]), "--data", str(workspace["data"]),
                                      "--max-images", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.stdout)["data"]["images"] <= 3
    assert "inspect:" not in result.stderr


def test_calibration_counts_its_timed_calls(capsys):
    calibrate(in_features=8, out_features=16, tokens=8, repeats=1, show_progress=True)
    err = capsys.readouterr().err
    lines = counted(err, "calibrating kernels for 8x16 layers (first run only)")
    assert lines and lines[-1][0] == lines[-1][1] > 1


def test_calibration_follows_the_process_switch(capsys):
    with progress_bars_disabled():
        calibrate(in_features=8, out_features=16, tokens=8, repeats=1)
    assert "calibrating" not in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--quiet", "-q"])
def test_main_turns_unasked_progress_off_for_the_command_only(flag, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("mtlcompress.data.synth.generate_scenes",
                        lambda *a, **k: seen.append(progress_bars_enabled()) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path / "d"), "--images", "1", flag])
    assert seen == [False]
    assert progress_bars_enabled()  # restored: later work in this process is unaffected


def test_plain_lines_when_batches_skip_the_tenths(capsys):
    with progress_bar("work", 100) as advance:
        for _ in range(14):  # 7, 14, ...: lands on a tenth only at 70
            advance(7)
        advance(2)
    # One line per tenth crossed, at the first count past it.
    assert [done for done, _ in counted(capsys.readouterr().err, "work")] == [14, 21, 35, 42, 56, 63, 70, 84, 91,
                                                                               100]
