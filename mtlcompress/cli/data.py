"""``mtlcompress data``: built-in synthetic scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.cli._options import JsonOpt, QuietOpt, SeedOpt, WorkersOpt
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.io.outputs import check_output
from mtlcompress.progress import progress_bar

app = typer.Typer(help="Built-in data: procedural 3D scenes with labels for five dense tasks.",
                  no_args_is_help=True)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (generic layout + manifest.json).")],
    images: Annotated[int, typer.Option(min=1, help="Number of still images (split into train/val).")] = 1000,
    videos: Annotated[int, typer.Option(min=0, help="Number of video clips.")] = 0,
    frames: Annotated[int, typer.Option(min=2, help="Frames per video clip.")] = 16,
    size: Annotated[int, typer.Option(min=8, help="Image side in pixels.")] = 64,
    seed: SeedOpt = 0,
    workers: WorkersOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that is not empty.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Render synthetic scenes with semseg, depth, normals, edges and saliency labels."""
    check_output(out, folder=True, overwrite=overwrite)
    from mtlcompress.data.synth import generate_scenes  # torch: only once a command runs

    info(f"writing {images} images and {videos} clips of {frames} frames to {out}", quiet or as_json)
    with progress_bar("rendering", images + videos * frames, enabled=not (quiet or as_json)) as advance:
        manifest = generate_scenes(out, images=images, videos=videos, frames=frames, size=size, seed=seed,
                                   progress=lambda done, total: advance(1), workers=workers)
    rows = [("images", manifest["images"]), ("train / val", f"{manifest['splits']['train']} / {manifest['splits']['val']}"),
            ("video clips", len(manifest["videos"])), ("size", manifest["size"]),
            ("classes", ", ".join(manifest["class_names"]))]
    emit(manifest, as_json, make_table(f"synthetic scenes in {out}", ["", "value"], rows))
