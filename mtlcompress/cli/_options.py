"""Options shared by several commands, written once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
DataOpt = Annotated[Path, typer.Option("--data", help="Dataset folder (generic, PASCAL-Context or NYUD-v2 layout).")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="Continue from the saved state of an interrupted run.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")]

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


PrecisionOpt = Annotated[str, typer.Option(
    "--precision", callback=one_of(PRECISION_NAMES),
    help=f"Compute dtype: {', '.join(PRECISION_NAMES)}. auto: fp32 on cpu, the bundle's stored dtype (`export "
         "--dtype`) on cuda. Weights are cast once; outputs are fp32 either way. 16-bit on cpu works, but is only "
         "fast on CPUs with bf16/fp16 matrix instructions.")]
