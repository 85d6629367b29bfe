"""``mtlcompress run``: a bundle file on images and a video folder, PNGs out, JSON summary."""

from __future__ import annotations

import importlib.util
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
    assert summary["files_written"] == 4 * (len(TASKS) * 2 + 1)  # PNG and .npy per task, one overview
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
        assert sorted(p.name for p in (tmp_path / "out" / "clip" / frame.stem).iterdir()) == [
            "depth.png", "normals.png", "overview.png"]
    clip = summary["clips"][0]
    assert clip["keyframes"] == [0, 3] and len(clip["frame_seconds"]) == 5 and clip["fps"] == 25.0


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
    (["ok.png", "--graphs", "always"], "unknown graphs mode"),
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


# -- photos of any size (issue #17.2) ------------------------------------------------------
def test_a_451x300_photo_gives_maps_overview_and_raw_at_451x300(bundle_file, tmp_path):
    photo = _write_images(tmp_path / "in", 1, size=(451, 300), prefix="wide")[0]
    summary = _invoke(bundle_file, photo, "--out", tmp_path / "out", "--save-raw")
    assert any("resized 451x300 to 32x32" in w for w in summary["warnings"])
    folder = tmp_path / "out" / "wide_000"
    for task, channels in TASKS.items():
        with Image.open(folder / f"{task}.png") as png:
            assert png.size == (451, 300)
        assert np.load(folder / f"{task}.npy").shape == (channels, 300, 451)
    with Image.open(folder / "overview.png") as overview:
        assert overview.size[0] == 451 * (1 + len(TASKS)) and overview.size[1] > 300
        assert np.array_equal(np.asarray(overview.convert("RGB"))[:300, :451], np.asarray(Image.open(photo)))


# -- where run writes (issue #21.5) ------------------------------------------------------
def test_an_input_named_dots_png_writes_inside_out(bundle_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "...png", format="PNG")
    _invoke(bundle_file, folder / "...png", "--out", tmp_path / "nest" / "out", "--tasks", "depth")
    assert not (tmp_path / "nest" / "depth.png").exists()
    assert (tmp_path / "nest" / "out" / "__" / "depth.png").exists()


def test_a_linked_folder_in_out_is_refused_and_its_target_untouched(bundle_file, tmp_path, monkeypatch, capsys):
    _write_images(tmp_path / "imgs", 1)
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "frame_000").symlink_to(victim)
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "run", str(bundle_file), str(tmp_path / "imgs"), "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "frame_000 is a symbolic link" in capsys.readouterr().err
    assert list(victim.iterdir()) == []


def test_a_linked_file_in_out_is_replaced_and_its_target_untouched(bundle_file, tmp_path):
    _write_images(tmp_path / "imgs", 1)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (tmp_path / "out" / "frame_000").mkdir(parents=True)
    (tmp_path / "out" / "frame_000" / "depth.png").symlink_to(victim)
    _invoke(bundle_file, tmp_path / "imgs", "--out", tmp_path / "out", "--tasks", "depth")
    assert victim.read_bytes() == b"precious"
    with Image.open(tmp_path / "out" / "frame_000" / "depth.png") as png:
        assert png.size == (32, 32)
    leftovers = [p.name for p in (tmp_path / "out" / "frame_000").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temp files behind


@pytest.mark.parametrize("video", [False, True])
def test_inputs_whose_stems_collide_keep_their_suffix(bundle_file, tmp_path, video):
    folder = tmp_path / "clip"
    folder.mkdir()
    Image.new("RGB", (32, 32), (0, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "a.jpg")
    _invoke(bundle_file, folder, "--out", tmp_path / "out", "--tasks", "depth", "--save-raw",
            *(["--video"] if video else []))
    root = tmp_path / "out" / "clip" if video else tmp_path / "out"
    dark, light = np.load(root / "a.png" / "depth.npy"), np.load(root / "a.jpg" / "depth.npy")
    assert not np.array_equal(dark, light)  # two outputs, neither written over the other


def test_an_output_never_replaces_an_input(bundle_file, tmp_path, monkeypatch, capsys):
    photo = _write_images(tmp_path / "out" / "depth", 1, prefix="depth")[0].rename(tmp_path / "out" / "depth" /
                                                                                      "depth.png")
    before = photo.read_bytes()
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "run", str(bundle_file), str(photo), "--out", str(tmp_path / "out"),
                                      "--tasks", "depth"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "is one of the inputs" in capsys.readouterr().err
    assert photo.read_bytes() == before


# -- video files (issue #19.5) and streaming from disk (issue #21.9) -----------------------
HAVE_AV = importlib.util.find_spec("av") is not None
needs_av = pytest.mark.skipif(not HAVE_AV, reason="PyAV not installed (pip install 'mtlcompress[video]')")


def _write_clip(path: Path, count: int, fps: int = 12, size: tuple[int, int] = (32, 32)) -> Path:
    from mtlcompress.io.video import VideoWriter

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps) as writer:
        for i in range(count):
            frame = base.copy()
            frame[4 * i:4 * i + 8, :8] = 255
            writer.write(frame)
    return path


def _decoded(path: Path) -> tuple[int, tuple[int, int], float]:
    from mtlcompress.io.video import probe_video, read_video_frames

    info = probe_video(path)
    return sum(1 for _ in read_video_frames(path)), (info.width, info.height), float(info.fps)


@needs_av
def test_a_video_file_writes_one_video_per_task_and_timings_in_json(bundle_file, tmp_path):
    clip = _write_clip(tmp_path / "walk.mp4", 5, fps=12)
    summary = _invoke(bundle_file, clip, "--out", tmp_path / "out", "--keyframe-every", "3")
    assert summary["videos"] == 1 and summary["images"] == 5 and summary["keyframes"] == 2
    (record,) = summary["clips"]
    assert record["input"] == "walk" and record["frames"] == 5 and record["fps"] == 12.0
    assert record["keyframes"] == [0, 3]
    assert len(record["frame_seconds"]) == 5 and all(s >= 0 for s in record["frame_seconds"])
    assert sorted(record["videos"]) == sorted(TASKS)
    for task in TASKS:
        assert _decoded(tmp_path / "out" / "walk" / f"{task}.mp4") == (5, (32, 32), 12.0)
    assert sorted(p.name for p in (tmp_path / "out" / "walk").iterdir()) == sorted(f"{t}.mp4" for t in TASKS)


@needs_av
def test_a_video_file_through_the_api_with_frames_at_the_clip_size(bundle_file, tmp_path):
    from mtlcompress.report.media import run_on_media

    clip = _write_clip(tmp_path / "walk.mov", 3, fps=10, size=(46, 30))
    summary = run_on_media(load_bundle(bundle_file), [clip], tmp_path / "out", tasks=["depth"], frames=True)
    assert summary["clips"][0]["frames"] == 3
    assert _decoded(tmp_path / "out" / "walk" / "depth.mp4") == (3, (46, 30), 10.0)
    for i in range(3):
        frame = tmp_path / "out" / "walk" / f"frame_{i:06d}"
        assert sorted(p.name for p in frame.iterdir()) == ["depth.png", "overview.png"]
        with Image.open(frame / "depth.png") as png:
            assert png.size == (46, 30)


@pytest.mark.parametrize("source", ["folder", pytest.param("file", marks=needs_av)])
def test_clips_are_read_frame_by_frame_while_results_are_written(bundle_file, tmp_path, monkeypatch, source):
    from mtlcompress.report import media

    if source == "folder":
        _write_images(tmp_path / "clip", 6)
        inputs, reader = [tmp_path / "clip"], "read_photo"
    else:
        inputs, reader = [_write_clip(tmp_path / "clip.mp4", 6)], "read_video_frames"
    reads, reads_at_first_write = [0], []
    original_reader, original_image = getattr(media, reader), media.prediction_image

    def counting_reader(*args, **kwargs):
        result = original_reader(*args, **kwargs)
        if reader == "read_photo":
            reads[0] += 1
            return result
        return (reads.__setitem__(0, reads[0] + 1) or frame for frame in result)

    def recording_image(*args, **kwargs):
        reads_at_first_write.append(reads[0])
        return original_image(*args, **kwargs)

    monkeypatch.setattr(media, reader, counting_reader)
    monkeypatch.setattr(media, "prediction_image", recording_image)
    summary = media.run_on_media(load_bundle(bundle_file), inputs, tmp_path / "out", video=True, tasks=["depth"])
    assert summary["images"] == 6 and reads[0] == 6
    assert reads_at_first_write[0] <= 2  # the first result is written long before the clip is read


def test_a_video_file_without_pyav_is_one_line_naming_the_extra(bundle_file, tmp_path, monkeypatch, capsys):
    (tmp_path / "walk.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "run", str(bundle_file), str(tmp_path / "walk.mp4"), "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "pip install 'mtlcompress[video]'" in capsys.readouterr().err


def test_a_frame_folder_without_pyav_still_writes_frames_and_warns(bundle_file, tmp_path, monkeypatch):
    _write_images(tmp_path / "clip", 2)
    monkeypatch.setitem(sys.modules, "av", None)
    summary = _invoke(bundle_file, tmp_path / "clip", "--video", "--out", tmp_path / "out", "--tasks", "depth")
    assert summary["clips"][0]["videos"] == {}
    assert any("per-task videos not written, PyAV is missing" in w for w in summary["warnings"])
    assert (tmp_path / "out" / "clip" / "frame_001" / "depth.png").exists()


def test_the_engine_names_in_run_help_are_the_registry():
    from mtlcompress.cli.run import ENGINE_NAMES
    from mtlcompress.runtime.engines import ENGINES

    assert ENGINE_NAMES == ENGINES
