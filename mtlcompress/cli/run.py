"""``mtlcompress run``: predict every task of a bundle on images or video frames."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.bundle.format import load_bundle
from mtlcompress.cli._options import JsonOpt, QuietOpt
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.errors import MtlCompressError
from mtlcompress.io.images import MAX_PIXELS
from mtlcompress.report.media import run_on_media
from mtlcompress.runtime.allocator import keep_freed_memory
from mtlcompress.runtime.devices import resolve_device
from mtlcompress.runtime.engines import ENGINES


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle file written by `mtlcompress export`.")],
    inputs: Annotated[list[Path], typer.Argument(help="PNG/JPEG files or folders of them (with --video: a "
                                                      "folder is one clip, frames in name order).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: OUT/<input>/<task>.png.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks to predict; default: all in the bundle.")] = "",
    engine: Annotated[str, typer.Option(help=f"Executor: {' or '.join(ENGINES)} (the simulated reference).")
                      ] = "shared",
    save_raw: Annotated[bool, typer.Option("--save-raw", help="Also write raw float maps as <task>.npy.")] = False,
    video: Annotated[bool, typer.Option("--video", help="Stream folders as videos, reusing previous frames.")
                     ] = False,
    keyframe_every: Annotated[int, typer.Option(min=1, help="Video: a keyframe every K frames (every task "
                                                          "computed exactly, which resets the approximation).")] = 16,
    max_drift: Annotated[float, typer.Option(help="Video: force a keyframe once the unpropagated error "
                                                  "passes this relative size (> 0).")] = 0.25,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse input images with more pixels than this "
                                                        "(width x height), read from the header first.")
                          ] = MAX_PIXELS,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a bundle on images or videos and write one viewable PNG per task."""
    if engine not in ENGINES:
        raise MtlCompressError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    resolve_device(device)
    keep_freed_memory()
    loaded = load_bundle(bundle)
    selected = [t.strip() for t in tasks.split(",") if t.strip()] or None
    summary = run_on_media(loaded, inputs, out, tasks=selected, engine=engine, video=video,
                           keyframe_every=keyframe_every, max_drift=max_drift, batch_size=batch_size,
                           device=device, save_raw=save_raw, max_pixels=max_pixels)
    summary["bundle"] = str(bundle)
    if not as_json:
        for warning in summary["warnings"]:
            info(f"warning: {warning}", quiet)
    rate = summary["images_per_second"]
    rows = [("images", summary["images"]), ("videos", summary["videos"]), ("keyframes", summary["keyframes"]),
            ("tasks", ", ".join(summary["tasks"])), ("engine", engine), ("device", device),
            ("seconds", summary["seconds"]), ("images/s", rate), ("files written", summary["files_written"])]
    densities = make_table("activation-delta density (kept fraction, mean over layers)", ["task", "density"],
                           sorted(summary["activation_density"].items()))
    emit(summary, as_json, make_table(f"{bundle.name} -> {out}", ["", "value"], rows),
         *([densities] if summary["activation_density"] else []))
