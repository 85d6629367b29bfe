"""Inputs and outputs of ``mtlcompress run``: image files, folders, video frame folders,
and viewable PNGs (plus optional raw ``.npy`` maps) of every task's prediction.

Reading never prints: adjustments a user should know about (resizing, colour
conversion) come back as warning strings for the caller to show.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.tasks.registry import get_task

if TYPE_CHECKING:
    from mtlcompress.bundle.bundle import Bundle

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Viridis at 9 evenly spaced stops (matplotlib's table, rounded); interpolated to 256.
_VIRIDIS_STOPS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


@dataclass(frozen=True)
class MediaInput:
    """One thing to predict on: a single image, or a video given as ordered frames."""

    name: str
    frames: tuple[Path, ...]
    video: bool = False


def find_inputs(paths: Sequence[str | os.PathLike], video: bool = False) -> list[MediaInput]:
    """Expand files and folders into inputs; with ``video`` a folder is one clip.

    Folders hold images (PNG/JPEG, read in sorted name order); other files in them
    are ignored. Missing paths, empty folders and non-image files are errors.
    """
    inputs: list[MediaInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            frames = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
            if not frames:
                raise MtlCompressError(f"{path}: folder holds no PNG or JPEG images")
            if video:
                inputs.append(MediaInput(path.name, frames, video=True))
            else:
                inputs.extend(MediaInput(p.stem, (p,)) for p in frames)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise MtlCompressError(f"{path}: not a PNG or JPEG image (video must be a folder of frames)")
            inputs.append(MediaInput(path.stem, (path,)))
        else:
            raise MtlCompressError(f"{path}: no such file or folder")
    names = [i.name for i in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MtlCompressError(f"several inputs are named {', '.join(duplicates)}; their outputs would collide "
                               "(rename them or run them separately)")
    return inputs


def read_image(path: str | os.PathLike, size: int) -> tuple[torch.Tensor, list[str]]:
    """``[3, size, size]`` float in [0, 1] and the warnings about what was adjusted."""
    path = Path(path)
    warnings: list[str] = []
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                warnings.append(f"{path.name}: converted {img.mode} to RGB")
                img = img.convert("RGB")
            if img.size != (size, size):
                warnings.append(f"{path.name}: resized {img.size[0]}x{img.size[1]} to {size}x{size} "
                                "(the bundle's image size)")
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise MtlCompressError(f"{path}: no such image file") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise MtlCompressError(f"{path}: cannot read image ({exc}); use a valid PNG or JPEG") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), warnings


def read_images(paths: Sequence[str | os.PathLike], size: int) -> tuple[torch.Tensor, list[str]]:
    """A batch ``[N, 3, size, size]`` and all warnings."""
    tensors, warnings = [], []
    for path in paths:
        tensor, notes = read_image(path, size)
        tensors.append(tensor)
        warnings.extend(notes)
    return torch.stack(tensors), warnings


# --------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------
def class_palette(count: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved, fixed): ``[count, 3]`` uint8."""
    ids = np.arange(count)
    palette = np.zeros((count, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def viridis(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to viridis RGB uint8 (``values.shape + (3,)``)."""
    positions = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_VIRIDIS_STOPS) - 1)
    low = np.floor(positions).astype(np.int64).clip(0, len(_VIRIDIS_STOPS) - 2)
    frac = (positions - low)[..., None]
    rgb = _VIRIDIS_STOPS[low] * (1 - frac) + _VIRIDIS_STOPS[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


def prediction_image(task: str, raw: torch.Tensor) -> Image.Image:
    """A viewable picture of one raw head output ``[C, H, W]``.

    Categorical tasks: fixed class palette. Depth: viridis over the map's own range
    (near = dark). Normals: ``(n + 1) / 2`` as RGB. Other maps (edges, saliency):
    grey, 0 -> black, 1 -> white.
    """
    spec = get_task(task)
    prediction = spec.predict(raw.detach().float().cpu().unsqueeze(0))[0]
    if spec.categorical:
        ids = prediction.numpy().astype(np.int64) % 256
        return Image.fromarray(class_palette()[ids])
    values = prediction.numpy()
    if spec.name == "depth":
        depth = values[0]
        low, high = float(depth.min()), float(depth.max())
        return Image.fromarray(viridis((depth - low) / max(high - low, 1e-12)))
    if spec.name == "normals":
        rgb = np.clip((values.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
        return Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    grey = np.clip(values[0], 0.0, 1.0)
    return Image.fromarray(np.round(grey * 255).astype(np.uint8))


def save_predictions(out_dir: str | os.PathLike, outputs: Mapping[str, torch.Tensor],
                     save_raw: bool = False) -> list[Path]:
    """Write ``out_dir/<task>.png`` (and ``<task>.npy`` raw float maps) for one image."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, raw in outputs.items():
        png = out_dir / f"{task}.png"
        prediction_image(task, raw).save(png)
        written.append(png)
        if save_raw:
            npy = out_dir / f"{task}.npy"
            np.save(npy, raw.detach().float().cpu().numpy())
            written.append(npy)
    return written


# --------------------------------------------------------------------------------------
# Running a bundle over media (what ``mtlcompress run`` does).
# --------------------------------------------------------------------------------------
def run_on_media(bundle: Bundle, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 tasks: Sequence[str] | None = None, engine: str = "shared", video: bool = False,
                 keyframe_every: int = 16, max_drift: float = 0.25, batch_size: int = 8,
                 device: str = "cpu", save_raw: bool = False) -> dict[str, Any]:
    """Predict every input with ``bundle`` and write ``out/<input>/<task>.png``.

    Images go through ``predict`` in batches of ``batch_size``; with ``video`` each
    folder is streamed frame by frame (``out/<folder>/<frame>/<task>.png``). Returns a
    JSON-ready summary: counts, engine seconds (reading and writing excluded), measured
    activation-delta densities per task, keyframes, and the input warnings.
    """
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise MtlCompressError("--device cuda was asked for but no CUDA GPU is available")
    try:
        policy = KeyframePolicy(keyframe_every=keyframe_every, max_drift=max_drift)
    except ValueError as exc:
        raise MtlCompressError(str(exc)) from None
    if batch_size < 1:
        raise MtlCompressError("batch size must be >= 1")
    media = find_inputs(inputs, video=video)
    runner = make_engine(bundle, engine, tasks=tasks, device=device)
    size, out = bundle.backbone.img_size, Path(out)
    warnings: list[str] = []
    seconds, images, keyframes, written = 0.0, 0, 0, 0
    stills = [m for m in media if not m.video]
    for start in range(0, len(stills), batch_size):
        chunk = stills[start:start + batch_size]
        batch, notes = read_images([m.frames[0] for m in chunk], size)
        warnings.extend(notes)
        begin = time.perf_counter()
        outputs = runner.predict(batch)
        seconds += time.perf_counter() - begin
        for i, item in enumerate(chunk):
            written += len(save_predictions(out / item.name, {t: o[i] for t, o in outputs.items()}, save_raw))
        images += len(chunk)
    for clip in (m for m in media if m.video):
        frames = []
        for path in clip.frames:
            frame, notes = read_image(path, size)
            warnings.extend(notes)
            frames.append(frame.unsqueeze(0))
        begin = time.perf_counter()
        for result, path in zip(runner.stream(frames, policy), clip.frames):
            seconds += time.perf_counter() - begin
            keyframes += int(result.keyframe)
            written += len(save_predictions(out / clip.name / path.stem,
                                            {t: o[0] for t, o in result.outputs.items()}, save_raw))
            begin = time.perf_counter()
        images += len(clip.frames)
    densities = {task: sum(layers.values()) / len(layers) for task, layers in runner.stats.mean().items() if layers}
    return {"inputs": len(media), "images": images, "videos": sum(m.video for m in media),
            "keyframes": keyframes, "tasks": list(runner.tasks), "engine": engine, "device": str(device),
            "seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None,
            "activation_density": densities, "files_written": written, "out": str(out), "warnings": warnings}
