"""Example predictions for the HTML report: on a few images, each task's map from the
bundle next to the original single-task model's, drawn with the task's registered
colour map and encoded as base64 PNGs so the report stays one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image

from mtlcompress.report.media import prediction_image

# Thumbnails are drawn at least this wide: a 32-px map is unreadable at its own size.
MIN_THUMBNAIL = 96


def png_base64(image: Image.Image) -> str:
    """``image`` as base64 PNG text (for a ``data:image/png;base64,`` URL)."""
    if image.width < MIN_THUMBNAIL:
        scale = -(-MIN_THUMBNAIL // image.width)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def photo_image(image: torch.Tensor) -> Image.Image:
    """An input image ``[3, H, W]`` in [0, 1] as a picture."""
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def example_entry(stem: str, image: torch.Tensor, bundle_outputs: Mapping[str, torch.Tensor],
                  original_outputs: Mapping[str, torch.Tensor | None]) -> dict[str, Any]:
    """One report example: the photo and, per task, the bundle's and the original's map.

    Args:
        stem: the image's name in the dataset.
        image: the input ``[3, H, W]``.
        bundle_outputs: ``{task: raw map [C, H, W]}`` from the bundle.
        original_outputs: ``{task: raw map or None}`` from the original models (``None``
            when the original is not available).
    """
    return {"stem": stem, "image": png_base64(photo_image(image)),
            "tasks": {task: {"bundle": png_base64(prediction_image(task, raw)),
                             "original": (None if original_outputs.get(task) is None
                                          else png_base64(prediction_image(task, original_outputs[task])))}
                      for task, raw in bundle_outputs.items()}}
