"""``export --dtype`` and ``run``/``bench`` ``--precision`` on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtlcompress.bundle.format import SHORT_DTYPE_NAMES
from mtlcompress.cli import export as export_cli
from mtlcompress.cli.main import app
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.runtime.calibration import CACHE_DIR_ENV, default_cache_path, save_timings

MICRO = PRESETS["micro"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("half-cli")
    paths = []
    for task, channels in (("semseg", 4), ("depth", 1)):
        info = CheckpointInfo(task=task, backbone=MICRO, out_channels=channels, head_hidden=8,
                              num_classes=channels if task == "semseg" else None)
        save_checkpoint(build_model(info), info, folder / f"{task}.safetensors")
        paths.append(folder / f"{task}.safetensors")
    return paths


def test_dtype_names_in_help_are_the_formats():
    assert export_cli.DTYPE_NAMES == tuple(SHORT_DTYPE_NAMES)


def test_export_bf16_then_run_and_bench_in_bf16(checkpoints, tmp_path, monkeypatch, fixed_timings):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    save_timings(fixed_timings, default_cache_path("cpu"))
    bundle = tmp_path / "bf16.safetensors"
    done = CliRunner().invoke(app, ["export", "--base", str(checkpoints[0]), "--task", str(checkpoints[1]),
                                    "--out", str(bundle), "--dtype", "bf16", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["dtype"] == "bfloat16"
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "photo.png")
    ran = CliRunner().invoke(app, ["run", str(bundle), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out"),
                                   "--json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["precision"] == "fp32"  # auto on cpu, whatever is stored
    ran = CliRunner().invoke(app, ["run", str(bundle), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out2"),
                                   "--precision", "bf16"])
    assert ran.exit_code == 0, ran.output
    assert "bf16" in ran.stdout and (tmp_path / "out2" / "photo" / "depth.png").is_file()
    benched = CliRunner().invoke(app, ["bench", str(bundle), "--repeats", "1", "--warmup", "0", "--frames", "0",
                                       "--no-profile", "--precision", "fp16", "--json"])
    assert benched.exit_code == 0, benched.output
    assert json.loads(benched.stdout)["config"]["precision"] == "fp16"


@pytest.mark.parametrize("args", [["export", "--out", "x.safetensors", "--base", "a", "--dtype", "int8"],
                                  ["run", "b.safetensors", "in.png", "--out", "o", "--precision", "fp64"],
                                  ["bench", "b.safetensors", "--precision", "half"]])
def test_unknown_dtype_or_precision_is_a_usage_error(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 2
    assert "is not one of" in result.output
