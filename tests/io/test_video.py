"""Video files through PyAV (issue #19.5): lazy decoding, atomic encoding, clear errors."""

from __future__ import annotations

import importlib.util
import sys
from fractions import Fraction
from types import GeneratorType

import numpy as np
import pytest

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.video import VideoWriter, probe_video, read_video_frames, require_av

HAVE_AV = importlib.util.find_spec("av") is not None
needs_av = pytest.mark.skipif(not HAVE_AV, reason="PyAV not installed (pip install 'mtlcompress[video]')")


def write_clip(path, count: int = 6, size: tuple[int, int] = (32, 32), fps: Fraction | int = 12) -> list[np.ndarray]:
    """A short clip of flat grey frames getting brighter, and the frames written."""
    frames = [np.full((size[1], size[0], 3), 20 + 30 * i, dtype=np.uint8) for i in range(count)]
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return frames


@needs_av
def test_a_written_clip_decodes_with_its_count_size_rate_and_content(tmp_path):
    written = write_clip(tmp_path / "clip.mp4", count=6, fps=Fraction(30000, 1001))
    info = probe_video(tmp_path / "clip.mp4")
    assert (info.width, info.height, info.fps, info.frames) == (32, 32, Fraction(30000, 1001), 6)
    decoded = list(read_video_frames(tmp_path / "clip.mp4"))
    assert len(decoded) == 6 and decoded[0].shape == (32, 32, 3) and decoded[0].dtype == np.uint8
    for got, want in zip(decoded, written):
        assert abs(float(got.mean()) - float(want.mean())) < 3
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temp file left


@needs_av
def test_frames_are_decoded_one_at_a_time(tmp_path):
    write_clip(tmp_path / "clip.mp4", count=5)
    frames = read_video_frames(tmp_path / "clip.mp4")
    assert isinstance(frames, GeneratorType)
    assert next(frames).shape == (32, 32, 3)  # one frame out, the rest still in the file
    assert len(list(frames)) == 4


@needs_av
def test_odd_sizes_are_padded_to_even_for_players(tmp_path):
    write_clip(tmp_path / "odd.mp4", count=2, size=(45, 31))
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height) == (46, 32)


@needs_av
def test_an_abandoned_clip_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "depth.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 10) as writer:
            writer.write(np.zeros((8, 8, 3), np.uint8))
            raise RuntimeError("killed half way")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["depth.mp4"]


@needs_av
def test_a_link_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "depth.mp4").symlink_to(victim)
    write_clip(tmp_path / "depth.mp4", count=2)
    assert victim.read_text() == "precious" and not (tmp_path / "depth.mp4").is_symlink()


@needs_av
def test_unreadable_and_missing_videos_are_one_line(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(MtlCompressError, match=r"broken.mp4: cannot read video") as caught:
        list(read_video_frames(tmp_path / "broken.mp4"))
    assert "\n" not in str(caught.value)
    with pytest.raises(MtlCompressError, match="no such video file"):
        probe_video(tmp_path / "missing.mp4")


@needs_av
def test_the_pixel_limit_applies_to_video_frames(tmp_path):
    write_clip(tmp_path / "clip.mp4", count=1)
    with pytest.raises(MtlCompressError, match=r"frames are 32x32 \(1024 pixels\), over the limit of 1000"):
        probe_video(tmp_path / "clip.mp4", max_pixels=1000)


def test_without_pyav_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes ``import av`` raise ImportError
    with pytest.raises(MtlCompressError, match=r"video files need PyAV, which is not installed; pip install 'mtlcompress\[video\]'"):
        require_av()
