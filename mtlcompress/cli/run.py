"""``mtlcompress run``: predict every task of a bundle on images, frame folders or video files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.cli._options import DeviceOpt, InferencePrecisionOpt, JsonOpt, QuietOpt
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.errors import MtlCompressError
from mtlcompress.io.limits import MAX_PIXELS

ENGINE_NAMES = ("shared", "dense")  # checked against runtime.engines.ENGINES inside the command


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle file written by `mtlcompress export`.")],
    inputs: Annotated[list[Path], typer.Argument(help="PNG/JPEG files, folders of them, or video files (.mp4, "
                                                      ".avi, .mov, .mkv, .webm; needs the `video` extra). With "
                                                      "--video a folder is one clip, frames in name order.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: OUT/<input>/<task>.png and overview.png; a "
                                                    "clip also gets OUT/<clip>/<task>.mp4.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks to predict; default: all in the bundle.")] = "",
    engine: Annotated[str, typer.Option(help=f"Executor: {' or '.join(ENGINE_NAMES)} (the simulated reference).")
                      ] = "shared",
    save_raw: Annotated[bool, typer.Option("--save-raw", help="Also write raw float maps as <task>.npy, at the "
                                                              "photo's size.")] = False,
    video: Annotated[bool, typer.Option("--video", help="Stream folders as videos, reusing previous frames "
                                                        "(video files always are).")] = False,
    frames: Annotated[bool | None, typer.Option("--frames/--no-frames", help="Clips: also write per-frame PNGs, "
                                                "OUT/<clip>/<frame>/ (default: on for frame folders, off for video "
                                                "files).", show_default=False)] = None,
    overview: Annotated[bool, typer.Option("--overview/--no-overview", help="Write overview.png per input: the "
                                                                            "photo beside every task's map.")] = True,
    fps: Annotated[float, typer.Option(help="Frame rate of the task videos made from a frame folder (video "
                                            "files keep their own).")] = 25.0,
    keyframe_every: Annotated[int, typer.Option(min=1, help="Video: a keyframe every K frames (every task "
                                                          "computed exactly, which resets the approximation).")] = 16,
    max_drift: Annotated[float, typer.Option(help="Video: force a keyframe once the unpropagated error "
                                                  "passes this relative size (> 0).")] = 0.25,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    graphs: Annotated[str, typer.Option(help="Shared engine, images: off; auto (a static-shape path captured as "
                                        "CUDA graphs, on a CUDA device when every task is token-granular); on "
                                        "(that path on any device, eager off CUDA). Untested on a GPU so far.")
                      ] = "off",
    device: DeviceOpt = "auto",
    precision: InferencePrecisionOpt = "auto",
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse input images or video frames with more pixels "
                                                        "than this (width x height), read from the header first.")
                          ] = MAX_PIXELS,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a bundle on images or videos and write one viewable PNG per task.

    Photos of any size and aspect: the network sees each photo resized (stretched) to
    the bundle's image size, and every map is resized back to the photo's own
    width x height (bilinear on the raw outputs; class maps take the argmax after), so
    each PNG, .npy and overview matches its photo pixel for pixel.
    """
    from mtlcompress.bundle.format import load_bundle
    from mtlcompress.report.media import run_on_media
    from mtlcompress.runtime.allocator import keep_freed_memory
    from mtlcompress.runtime.devices import resolve_device
    from mtlcompress.runtime.engines import ENGINES

    if engine not in ENGINES:
        raise MtlCompressError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    device = str(resolve_device(device))  # "auto" -> the device it means here
    keep_freed_memory()
    loaded = load_bundle(bundle)
    selected = [t.strip() for t in tasks.split(",") if t.strip()] or None
    summary = run_on_media(loaded, inputs, out, tasks=selected, engine=engine, video=video,
                           keyframe_every=keyframe_every, max_drift=max_drift, batch_size=batch_size,
                           device=device, save_raw=save_raw, max_pixels=max_pixels, frames=frames,
                           overview=overview, fps=fps, precision=precision, graphs=graphs,
                           show_progress=not (quiet or as_json))
    summary["bundle"] = str(bundle)
    if not as_json:
        for warning in summary["warnings"]:
            info(f"warning: {warning}", quiet)
    rate = summary["images_per_second"]
    rows = [("images", summary["images"]), ("videos", summary["videos"]), ("keyframes", summary["keyframes"]),
            ("tasks", ", ".join(summary["tasks"])), ("engine", engine), ("device", device),
            ("precision", summary["precision"]),
            ("seconds", summary["seconds"]), ("images/s", rate), ("files written", summary["files_written"])]
    densities = make_table("activation-delta density (kept fraction, mean over layers)", ["task", "density"],
                           sorted(summary["activation_density"].items()))
    emit(summary, as_json, make_table(f"{bundle.name} -> {out}", ["", "value"], rows),
         *([densities] if summary["activation_density"] else []))
