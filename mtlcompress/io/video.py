"""Video files in and out, frame by frame, through PyAV (the optional ``video`` extra).

Decoding yields one RGB frame at a time and encoding takes one at a time, so a clip of
any length runs in constant memory. PyAV is imported only when a video is read or
written: without it, everything else in mtlcompress works, and a video file is one
clear line naming the extra to install.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.atomic import atomic_path

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
INSTALL_HINT = "pip install 'mtlcompress[video]'"

# Preferred first: H.264 plays in every browser and player; MPEG-4 part 2 is in every
# FFmpeg build, so a PyAV wheel without x264 still writes a viewable file.
ENCODERS: tuple[str, ...] = ("libx264", "mpeg4")


class VideoError(MtlCompressError):
    """A video file cannot be read or written, or PyAV is missing."""

    code = "video"


def require_av() -> ModuleType:
    """The ``av`` module, or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise VideoError(f"video files need PyAV, which is not installed; {INSTALL_HINT}") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's header says: frame size, frame rate, and the frame count when the
    container records one (0 otherwise)."""

    width: int
    height: int
    fps: Fraction
    frames: int


@contextlib.contextmanager
def _open_video(path: Path, max_pixels: int | None) -> Iterator[tuple[object, object]]:
    """The open container and its first video stream, checked against ``max_pixels``."""
    av = require_av()
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise VideoError(f"{path}: no such video file") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: cannot read video ({exc})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise VideoError(f"{path}: frames are {width}x{height} ({width * height} pixels), over the limit of "
                             f"{max_pixels} pixels; if it is genuine, raise the limit (mtlcompress run --max-pixels)")
        yield container, stream


def probe_video(path: str | os.PathLike, max_pixels: int | None = None) -> VideoInfo:
    """Read a clip's header (nothing is decoded)."""
    with _open_video(Path(path), max_pixels) as (_, stream):
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(rate), int(stream.frames))


def read_video_frames(path: str | os.PathLike, max_pixels: int | None = None) -> Iterator[np.ndarray]:
    """Decode a clip lazily: one uint8 ``[H, W, 3]`` RGB frame per step, in order."""
    path = Path(path)
    av = require_av()
    with _open_video(path, max_pixels) as (container, stream):
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"{path}: cannot decode video ({exc})") from None


def available_encoder() -> str:
    """The first of ``ENCODERS`` this PyAV build can write."""
    av = require_av()
    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - PyAV's "unknown codec" type moved between releases
            continue
        return name
    raise VideoError(f"this PyAV build has none of the encoders {', '.join(ENCODERS)}")


class VideoWriter:
    """Encode uint8 RGB frames into an MP4 at ``fps``, written atomically: frames go to
    a temp file beside ``path``, renamed over it by ``close`` (a link at ``path`` is
    replaced, never followed); if writing fails the temp file is removed.

    Frames with an odd width or height are padded by one repeated edge pixel, since
    the 4:2:0 colour format every player reads needs even sizes.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, encoder: str | None = None) -> None:
        self._av = require_av()
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(65535)  # MPEG-4's time base has 16 bits
        self.encoder = encoder or available_encoder()
        self.frames = 0
        self._files = contextlib.ExitStack()
        tmp = self._files.enter_context(atomic_path(self.path))
        self._container = self._av.open(str(tmp), "w", format="mp4")
        self._stream = None

    def write(self, rgb: np.ndarray) -> None:
        if self._stream is None:
            self._stream = self._container.add_stream(self.encoder, rate=self.fps)
            self._stream.width = rgb.shape[1] + rgb.shape[1] % 2
            self._stream.height = rgb.shape[0] + rgb.shape[0] % 2
            self._stream.pix_fmt = "yuv420p"
        padded = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
        frame.pts = self.frames
        frame.time_base = 1 / self.fps
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and move the finished file into place."""
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))
            self._container.close()
        except BaseException as exc:
            self._files.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._files.close()

    def abort(self) -> None:
        """Drop the partial file; ``path`` keeps whatever it held before."""
        with contextlib.suppress(Exception):
            self._container.close()
        error = VideoError(f"{self.path}: writing was abandoned")
        self._files.__exit__(VideoError, error, None)  # atomic_path removes its temp file

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()
