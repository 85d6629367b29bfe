"""What ``mtlcompress run`` writes, and the loop that writes it.

Per input: a viewable PNG of every task's prediction in the task's registered colour
map (plus, optionally, the raw float map as ``.npy``) and one overview image, the photo
beside every task's map; per video clip, one viewable video per task as well. Every map
is returned at the input photo's own size: the network reads the photo resized to the
bundle's image size, and its raw outputs (logits for class maps) are resized back with
bilinear interpolation before they are decoded, so class maps are the argmax of
interpolated logits, not blocky nearest-neighbour copies.

Every file goes through ``io.output_paths.OutputFolder`` (inside ``--out``, never
through a link, never over an input) and ``io.atomic.atomic_path`` (a killed run leaves
the old file or the new one, never half of one).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mtlcompress.errors import MtlCompressError
from mtlcompress.io import images as image_io
from mtlcompress.io.atomic import atomic_path
from mtlcompress.io.image_size import SizeLike
from mtlcompress.io.images import MediaInput, Photo, find_inputs, photo_from_image, read_photo
from mtlcompress.io.output_paths import OutputFolder
from mtlcompress.io.video import VideoError, VideoWriter, probe_video, read_video_frames, require_av
from mtlcompress.progress import Advance, progress_bar
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.runner import BundleRunner
from mtlcompress.tasks.registry import get_task
from mtlcompress.training.evaluate import resize_raw

if TYPE_CHECKING:
    from mtlcompress.bundle.bundle import Bundle

OVERVIEW_NAME = "overview"  # OUT/<input>/overview.png; no task may take this name
PHOTO_LABEL = "photo"
DEFAULT_FOLDER_FPS = 25.0  # frame folders carry no rate of their own


# --------------------------------------------------------------------------------------
# Pictures of predictions.
# --------------------------------------------------------------------------------------
def prediction_image(task: str, raw: torch.Tensor) -> Image.Image:
    """A viewable picture of one raw head output ``[C, H, W]``, in the task's registered
    colour map (built-in: class palette, depth in viridis over the map's own range,
    normals as ``(n + 1) / 2`` RGB, edges and saliency in grey)."""
    spec = get_task(task)
    prediction = spec.predict(raw.detach().float().cpu().unsqueeze(0))[0]
    return Image.fromarray(spec.colormap(prediction.numpy()))


def overview_image(photo: np.ndarray, maps: Mapping[str, Image.Image]) -> Image.Image:
    """The photo (uint8 ``[H, W, 3]``) and every task's map side by side, each panel
    ``W`` x ``H`` at ``x = i * W``, with the names on a caption strip underneath (so
    every panel holds exactly the pixels of its task's PNG)."""
    height, width = photo.shape[:2]
    font_px = max(10, min(width // 12, 48))
    strip = int(font_px * 1.6)
    canvas = Image.new("RGB", (width * (1 + len(maps)), height + strip), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_px)
    panels = [(PHOTO_LABEL, Image.fromarray(photo)), *maps.items()]
    for index, (label, panel) in enumerate(panels):
        if panel.size != (width, height):
            raise ValueError(f"overview panel '{label}' is {panel.size}, not the photo's {(width, height)}")
        canvas.paste(panel.convert("RGB"), (index * width, 0))
        draw.text((index * width + width // 2, height + strip // 2), label, fill=(0, 0, 0), font=font, anchor="mm")
    return canvas


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path, durable=False) as tmp:
        image.save(tmp, format="PNG")


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def save_predictions(out_dir: str | os.PathLike | OutputFolder, outputs: Mapping[str, torch.Tensor],
                     save_raw: bool = False, photo: np.ndarray | None = None) -> list[Path]:
    """Write ``out_dir/<task>.png`` (and ``<task>.npy`` raw float maps) for one image,
    and ``overview.png`` when the ``photo`` is given. Outputs are written at the size
    they come in (``resize_raw`` them first). ``run`` passes an ``OutputFolder`` that
    knows its inputs, so no output replaces one."""
    folder = out_dir if isinstance(out_dir, OutputFolder) else OutputFolder(out_dir)
    written = []
    maps = {}
    for task, raw in outputs.items():
        maps[task] = prediction_image(task, raw)
        png = folder.file(folder.root, f"{task}.png")
        _save_png(maps[task], png)
        written.append(png)
        if save_raw:
            npy = folder.file(folder.root, f"{task}.npy")
            _save_npy(raw.detach().float().cpu().numpy(), npy)
            written.append(npy)
    if photo is not None:
        path = folder.file(folder.root, f"{OVERVIEW_NAME}.png")
        _save_png(overview_image(photo, maps), path)
        written.append(path)
    return written


def _at_photo_size(outputs: Mapping[str, torch.Tensor], index: int, photo: Photo) -> dict[str, torch.Tensor]:
    return {task: resize_raw(raw[index], (photo.height, photo.width)) for task, raw in outputs.items()}


# --------------------------------------------------------------------------------------
# Running a bundle over media (what ``mtlcompress run`` does).
# --------------------------------------------------------------------------------------
def run_on_media(bundle: Bundle, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 tasks: Sequence[str] | None = None, engine: str = "shared", video: bool = False,
                 keyframe_every: int = 16, max_drift: float = 0.25, batch_size: int = 8,
                 device: str = "cpu", save_raw: bool = False, max_pixels: int | None = None,
                 frames: bool | None = None, overview: bool = True,
                 fps: float = DEFAULT_FOLDER_FPS, precision: str = "auto", graphs: str = "off",
                 show_progress: bool = False) -> dict[str, Any]:
    """Predict every input with ``bundle`` and write ``out/<input>/<task>.png`` (and
    ``overview.png``), every map at the input's own size.

    Images go through ``predict`` in batches of ``batch_size``. Video files
    (``io.video.VIDEO_SUFFIXES``, needs PyAV) and, with ``video``, folders of frames are
    streamed one frame at a time from disk (constant memory) and write one video per
    task, ``out/<clip>/<task>.mp4``, at the clip's frame rate (``fps`` for folders; the
    videos are skipped with a warning if PyAV is missing). ``frames`` writes per-frame
    PNGs, ``out/<clip>/<frame>/<task>.png``: default on for frame folders, off for video
    files. Returns a JSON-ready summary: counts, engine seconds (reading and writing
    excluded), measured activation-delta densities per task, per clip the keyframes and
    each frame's seconds, and the input warnings. Inputs over ``max_pixels`` (default
    ``mtlcompress.io.images.MAX_PIXELS``) are refused. ``precision`` is the compute
    dtype (``runtime.runner.resolve_precision``); ``graphs`` the shared engine's static
    image path (``SharedEngine``). ``show_progress`` counts the images,
    and each clip's frames, on stderr.
    """
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise MtlCompressError("--device cuda was asked for but no CUDA GPU is available")
    try:
        policy = KeyframePolicy(keyframe_every=keyframe_every, max_drift=max_drift)
    except ValueError as exc:
        raise MtlCompressError(str(exc)) from None
    if batch_size < 1:
        raise MtlCompressError("batch size must be >= 1")
    if not fps > 0:
        raise MtlCompressError("fps must be > 0")
    limit = image_io.MAX_PIXELS if max_pixels is None else max_pixels
    media = find_inputs(inputs, video=video, video_files=True)
    runner = BundleRunner(bundle, engine, device=device, tasks=tasks, precision=precision, graphs=graphs)
    if OVERVIEW_NAME in runner.tasks:
        raise MtlCompressError(f"a task named '{OVERVIEW_NAME}' would collide with the overview image")
    files = OutputFolder(out, protected=[path for item in media for path in item.frames])
    size = bundle.backbone.img_size
    warnings: list[str] = []
    seconds, images, written = 0.0, 0, 0
    stills = [m for m in media if not m.video]
    with progress_bar("run: images", len(stills), enabled=show_progress and bool(stills)) as advance:
        for start in range(0, len(stills), batch_size):
            chunk = stills[start:start + batch_size]
            photos = [read_photo(m.frames[0], size, limit) for m in chunk]
            warnings.extend(note for photo in photos for note in photo.notes)
            begin = time.perf_counter()
            outputs = runner.predict(torch.stack([photo.pixels for photo in photos]))
            seconds += time.perf_counter() - begin
            for i, (item, photo) in enumerate(zip(chunk, photos)):
                written += len(save_predictions(files.child(item.name), _at_photo_size(outputs, i, photo), save_raw,
                                                photo.rgb if overview else None))
            images += len(chunk)
            advance(len(chunk))
    clips = []
    for clip in (m for m in media if m.video):
        write_frames = (not clip.is_video_file) if frames is None else frames
        summary = _run_clip(runner, clip, files, policy, size, limit, fps, warnings,
                            write_frames=write_frames, save_raw=save_raw, overview=overview,
                            show_progress=show_progress)
        seconds += sum(summary["frame_seconds"])
        images += summary["frames"]
        written += summary.pop("files_written")
        clips.append(summary)
    densities = {task: sum(layers.values()) / len(layers)
                 for task, layers in runner.engine.stats.mean().items() if layers}
    return {"inputs": len(media), "images": images, "videos": len(clips),
            "keyframes": sum(len(c["keyframes"]) for c in clips), "tasks": list(runner.tasks), "engine": engine,
            "device": str(device), "precision": runner.precision, "seconds": seconds,
            "images_per_second": images / seconds if seconds > 0 else None,
            "activation_density": densities, "files_written": written, "out": str(out), "clips": clips,
            "warnings": warnings}


def _clip_photos(clip: MediaInput, size: SizeLike,
                 limit: int) -> tuple[Iterator[tuple[str, Photo]], Fraction | None, int]:
    """The clip's frames as ``(output name, photo)``, read lazily, its frame rate (None
    for a frame folder) and its frame count (0 where a video's header does not say)."""
    if clip.is_video_file:
        path = clip.frames[0]
        probed = probe_video(path, limit)
        decoded = read_video_frames(path, limit)
        return ((f"frame_{i:06d}", photo_from_image(Image.fromarray(rgb), size, path.name))
                for i, rgb in enumerate(decoded)), probed.fps, probed.frames
    return ((name, read_photo(p, size, limit)) for name, p in zip(clip.frame_names, clip.frames)), None, len(clip.frames)


def _run_clip(runner: BundleRunner, clip: MediaInput, files: OutputFolder, policy: KeyframePolicy,
              size: SizeLike, limit: int, fps: float, warnings: list[str], *, write_frames: bool, save_raw: bool,
              overview: bool, show_progress: bool = False) -> dict[str, Any]:
    """Stream one clip: frames are read only as the engine asks for them, and each
    result is written (to the task videos and, with ``write_frames``, as PNGs) before
    the next frame is read."""
    photos, rate, total = _clip_photos(clip, size, limit)
    with progress_bar(f"run: {clip.name} frames", total, enabled=show_progress and total > 0) as advance:
        return _stream_clip(runner, clip, files, policy, photos, rate or Fraction(fps).limit_denominator(1001),
                            warnings, write_frames=write_frames, save_raw=save_raw, overview=overview,
                            advance=advance)


def _stream_clip(runner: BundleRunner, clip: MediaInput, files: OutputFolder, policy: KeyframePolicy,
                 photos: Iterator[tuple[str, Photo]], rate: Fraction, warnings: list[str], *, write_frames: bool,
                 save_raw: bool, overview: bool, advance: Advance) -> dict[str, Any]:
    folder = files.folder(clip.name)
    pending: deque[tuple[str, Photo, float]] = deque()  # read, not yet answered: one frame in practice
    seen_notes: set[str] = set()

    def pixels() -> Iterator[torch.Tensor]:
        while True:
            begin = time.perf_counter()
            try:
                name, photo = next(photos)
            except StopIteration:
                return
            for note in photo.notes:  # every frame of a clip repeats the same adjustments
                if note not in seen_notes:
                    seen_notes.add(note)
                    warnings.append(note)
            pending.append((name, photo, time.perf_counter() - begin))
            yield photo.pixels.unsqueeze(0)

    writers = _open_task_writers(runner.tasks, folder, files, rate, clip, warnings)
    keyframes, frame_seconds, written = [], [], 0
    try:
        begin = time.perf_counter()
        for result in runner.stream(pixels(), policy):
            name, photo, reading = pending.popleft()
            frame_seconds.append(time.perf_counter() - begin - reading)
            if result.keyframe:
                keyframes.append(result.index)
            maps = _at_photo_size(result.outputs, 0, photo)
            for task, writer in writers.items():
                writer.write(np.asarray(prediction_image(task, maps[task]).convert("RGB")))
            if write_frames:
                written += len(save_predictions(files.child(clip.name, name), maps, save_raw,
                                                photo.rgb if overview else None))
            advance()
            begin = time.perf_counter()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    return {"input": clip.name, "source": str(clip.frames[0] if clip.is_video_file else clip.frames[0].parent),
            "frames": len(frame_seconds), "fps": float(rate), "keyframes": keyframes,
            "frame_seconds": frame_seconds, "videos": {task: str(w.path) for task, w in writers.items()},
            "files_written": written + len(writers)}


def _open_task_writers(tasks: Sequence[str], folder: Path, files: OutputFolder, rate: Fraction, clip: MediaInput,
                       warnings: list[str]) -> dict[str, VideoWriter]:
    """One video writer per task; a frame folder without PyAV gets a warning instead."""
    try:
        require_av()
    except VideoError:
        if clip.is_video_file:
            raise
        warnings.append(f"{clip.name}: per-task videos not written, PyAV is missing; "
                        "pip install 'mtlcompress[video]'")
        return {}
    writers: dict[str, VideoWriter] = {}
    try:
        for task in tasks:
            writers[task] = VideoWriter(files.file(folder, f"{task}.mp4"), rate)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return writers
