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

# Names the option help lists, kept here so that `--help` does not import torch (the
# modules that define them do). tests/cli/test_startup.py keeps each equal to its source.
TASK_NAMES = ("semseg", "parts", "depth", "normals", "edges", "saliency")   # tasks.registry.task_names()
DEMO_PRESET_NAMES = ("default", "quick")                                  # demo.DEMO_PRESETS
DEMO_STEPS = ("train", "sparsify", "export", "run")                       # demo.DEMO_STAGES
