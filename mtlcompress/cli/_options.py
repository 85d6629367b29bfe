"""Options shared by several commands, written once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.image_size import image_size

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
DataOpt = Annotated[Path, typer.Option("--data", help="Dataset folder (generic, PASCAL-Context or NYUD-v2 layout).")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="Continue from the saved state of an interrupted run.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")]
# The device and precision options of every command that runs a model (mtlcompress.devices checks
# the value; under torchrun, cuda and auto mean the process's own GPU, from LOCAL_RANK).
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N "
                                                        "or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; fp16 with a grad "
                                                              "scaler when training).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes that load (or "
                                                                 "generate) images ahead of the model; 0: in the "
                                                                 "main process.")]
AccumulateOpt = Annotated[int, typer.Option("--accumulate", min=1, help="Micro-batches per optimiser step "
                                                                       "(gradient accumulation), so a global "
                                                                       "batch fits one GPU.")]


def parse_img_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"192x256"``, ``"192,256"`` or ``"192 256"`` -> (192, 256)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x, ]\s*(\d+)\s*)?", text)
    if match is None:
        raise typer.BadParameter(f"{text!r}: give one number or two (height width), e.g. 224 or 192 256")
    try:
        return image_size([int(part) for part in match.groups() if part is not None], "--img-size")
    except MtlCompressError as exc:
        raise typer.BadParameter(str(exc)) from None


def join_img_size_arguments(args: list[str]) -> list[str]:
    """``--img-size 192 256`` -> ``--img-size 192x256``: options take one value each, and
    the height-then-width pair reads best as two numbers."""
    out: list[str] = []
    index = 0
    while index < len(args):
        if args[index] == "--img-size" and index + 2 < len(args) and args[index + 1].isdigit() \
                and args[index + 2].isdigit():
            out += [args[index], f"{args[index + 1]}x{args[index + 2]}"]
            index += 3
            continue
        out.append(args[index])
        index += 1
    return out


# Annotated as str for typer (a tuple annotation would make it take exactly two values);
# the parser turns it into (height, width).
ImgSizeOpt = Annotated[str | None, typer.Option(
    parser=parse_img_size, metavar="H [W]",
    help="Input size in pixels: one number (square) or two, height then width (each a multiple of the "
         "patch size); position embeddings are resampled with timm's resample_abs_pos_embed.")]

# Names the option help lists, kept here so that `--help` does not import torch (the
# modules that define them do). tests/cli/test_startup.py keeps each equal to its source.
TASK_NAMES = ("semseg", "parts", "depth", "normals", "edges", "saliency")   # tasks.registry.task_names()
DEMO_PRESET_NAMES = ("default", "quick")                                  # demo.DEMO_PRESETS
DEMO_STEPS = ("train", "sparsify", "export", "run")                       # demo.DEMO_STAGES
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")                        # runtime.runner.PRECISIONS


def one_of(names: tuple[str, ...]):
    """An option callback that refuses values outside ``names`` as a usage error (exit 2)."""
    def check(value: str) -> str:
        if value not in names:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(names)}")
        return value
    return check


# Inference precision (run, bench): unlike training's autocast, a bundle's weights are cast once.
InferencePrecisionOpt = Annotated[str, typer.Option(
    "--precision", callback=one_of(PRECISION_NAMES),
    help=f"Compute dtype: {', '.join(PRECISION_NAMES)}. auto: fp32 on cpu, the bundle's stored dtype (`export "
         "--dtype`) on cuda. Weights are cast once; outputs are fp32 either way. 16-bit on cpu works, but is only "
         "fast on CPUs with bf16/fp16 matrix instructions.")]
