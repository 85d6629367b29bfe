"""``mtlcompress run``: a bundle file on images and a video folder, PNGs out, JSON summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import load_bundle, save_bundle
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.cli.main import app, main
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.runtime.calibration import CACHE_DIR_ENV, default_cache_path, save_timings
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost
from mtlcompress.runtime.dense_engine import DenseEngine

MICRO = PRESETS["micro"]
TASKS = {"semseg": 4, "depth": 1, "normals": 3}

@pytest.fixture(autouse=True)
def _one_thread_and_fixed_timings(monkeypatch, tmp_path):
    """Micro models run best on one thread; fixed kernel timings skip the calibration."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    paths = dict(dense=LinearCost(1e-3, 1e-9), token=LinearCost(0.0, 1e-12), element=LinearCost(1.0, 1.0),
                 sparse_weight=LinearCost(0.0, 1e-12))
    save_timings(KernelTimings(**paths, device="cpu", dtype="float32", device_name="test"), default_cache_path("cpu"))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory) -> Path:
    """semseg base, depth and normals = base + 5% delta; token thresholds on every layer."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    paths, base_state = [], None
    for task, channels in TASKS.items():
        info = CheckpointInfo(task=task, backbone=MICRO, out_channels=channels, head_hidden=16,
                              num_classes=channels if task == "semseg" else None)
        model = build_model(info)
        if base_state is None:
            base_state = model.backbone.state_dict()
        else:
            model.backbone.load_state_dict({k: v + (torch.rand_like(v) < 0.05) * torch.randn_like(v) * 0.3
                                            for k, v in base_state.items()})
        save_checkpoint(model, info, folder / f"{task}.safetensors")
        paths.append(folder / f"{task}.safetensors")
    bundle = Bundle.from_checkpoints(paths[0], paths[1:])
    layers = shared_linear_names(MICRO.depth)
    for task in ("depth", "normals"):
        bundle.tasks[task].activation = ActivationSparsity("token", dict.fromkeys(layers, 0.05),
                                                           dict.fromkeys(layers, 0.02))
    bundle.tasks["semseg"].activation = ActivationSparsity("token", {}, dict.fromkeys(layers, 0.02))
    save_bundle(bundle, folder / "bundle.mtlc")
    return folder / "bundle.mtlc"


def _write_images(folder: Path, count: int, size: tuple[int, int] = (32, 32), mode: str = "RGB",
                  prefix: str = "frame") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(list(folder.iterdir())))
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        frame = base.copy()
        frame[4 * i:4 * i + 8, :8] = 255  # a square moving down
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(frame).convert(mode).save(path)
        paths.append(path)
    return paths


def _invoke(*args: str | Path) -> dict:
    result = CliRunner().invoke(app, ["run", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_run_images_writes_one_png_per_task_and_a_json_summary(bundle_file, tmp_path):
    images = _write_images(tmp_path / "imgs", 3)
    odd = _write_images(tmp_path / "odd", 1, size=(40, 24), mode="L", prefix="odd")[0]
    summary = _invoke(bundle_file, tmp_path / "imgs", odd, "--out", tmp_path / "out", "--batch-size", "2",
                      "--save-raw")
    assert summary["images"] == 4 and summary["videos"] == 0
    assert summary["tasks"] == list(TASKS) and summary["engine"] == "shared"
    assert summary["files_written"] == 4 * len(TASKS) * 2
    assert set(summary["activation_density"]) == {"depth", "normals"}
    assert all(0 < d <= 1 for d in summary["activation_density"].values())
    assert any("converted L to RGB" in w for w in summary["warnings"])
    assert any("resized 40x24 to 32x32" in w for w in summary["warnings"])
    for stem in [p.stem for p in images]:
        for task in TASKS:
            with Image.open(tmp_path / "out" / stem / f"{task}.png") as png:
                assert png.size == (32, 32)
    # The raw maps are what the reference engine predicts.
    bundle = load_bundle(bundle_file)
    pixels = torch.from_numpy(np.asarray(Image.open(images[1]), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = DenseEngine(bundle).predict(pixels)
    for task in TASKS:
        raw = np.load(tmp_path / "out" / images[1].stem / f"{task}.npy")
        assert np.abs(raw - expected[task][0].numpy()).max() <= 1e-4


def test_run_video_folder_streams_frames_with_keyframes(bundle_file, tmp_path):
    frames = _write_images(tmp_path / "clip", 5)
    summary = _invoke(bundle_file, tmp_path / "clip", "--video", "--out", tmp_path / "out", "--tasks",
                      "depth,normals", "--keyframe-every", "3")
    # 2 by the policy; more if the engine measured its delta frames dearer than keyframes
    # and computed the later frames in full (runtime/stream_fallback.py).
    assert summary["videos"] == 1 and summary["images"] == 5 and summary["keyframes"] >= 2
    assert summary["tasks"] == ["depth", "normals"]
    assert "depth/temporal" in summary["activation_density"]
    for frame in frames:
        assert sorted(p.name for p in (tmp_path / "out" / "clip" / frame.stem).iterdir()) == ["depth.png",
                                                                                             "normals.png"]


def test_dense_engine_and_table_output(bundle_file, tmp_path):
    _write_images(tmp_path / "imgs", 1)
    result = CliRunner().invoke(app, ["run", str(bundle_file), str(tmp_path / "imgs"), "--out",
                                      str(tmp_path / "out"), "--engine", "dense", "--tasks", "depth"])
    assert result.exit_code == 0, result.output
    assert "images" in result.stdout and "depth" in result.stdout
    assert (tmp_path / "out" / "frame_000" / "depth.png").exists()
    assert not (tmp_path / "out" / "frame_000" / "semseg.png").exists()


@pytest.mark.parametrize("args,message", [
    (["missing.png"], "no such file or folder"),
    (["broken.png"], "cannot read image"),
    (["ok.png", "--tasks", "parts"], "not in the bundle"),
    (["ok.png", "--engine", "fast"], "unknown engine"),
    (["ok.png", "--max-drift", "0"], "max_drift"),
    (["ok.png", "--max-pixels", "1023"], "ok.png: image is 32x32 (1024 pixels), over the limit of 1023 pixels"),
])
def test_user_errors_are_one_line(bundle_file, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    argv = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "run", str(bundle_file), *argv, "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
