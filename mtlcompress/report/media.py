"""What ``mtlcompress run`` writes: a viewable PNG (plus an optional raw ``.npy`` map) of
every task's prediction, drawn with the task's registered colour map; and the loop that
runs a bundle over the inputs ``mtlcompress.io.images`` finds and reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.images import find_inputs, read_image, read_images
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.tasks.registry import get_task

if TYPE_CHECKING:
    from mtlcompress.bundle.bundle import Bundle


def prediction_image(task: str, raw: torch.Tensor) -> Image.Image:
    """A viewable picture of one raw head output ``[C, H, W]``, in the task's registered
    colour map (built-in: class palette, depth in viridis over the map's own range,
    normals as ``(n + 1) / 2`` RGB, edges and saliency in grey)."""
    spec = get_task(task)
    prediction = spec.predict(raw.detach().float().cpu().unsqueeze(0))[0]
    return Image.fromarray(spec.colormap(prediction.numpy()))


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
                 device: str = "cpu", save_raw: bool = False, max_pixels: int | None = None) -> dict[str, Any]:
    """Predict every input with ``bundle`` and write ``out/<input>/<task>.png``.

    Images go through ``predict`` in batches of ``batch_size``; with ``video`` each
    folder is streamed frame by frame (``out/<folder>/<frame>/<task>.png``). Returns a
    JSON-ready summary: counts, engine seconds (reading and writing excluded), measured
    activation-delta densities per task, keyframes, and the input warnings. Inputs over
    ``max_pixels`` (default ``mtlcompress.io.images.MAX_PIXELS``) are refused.
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
        batch, notes = read_images([m.frames[0] for m in chunk], size, max_pixels)
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
            frame, notes = read_image(path, size, max_pixels)
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
