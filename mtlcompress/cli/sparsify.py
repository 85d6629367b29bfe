"""``mtlcompress sparsify``: one sub-command per stage, and ``all`` for a plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtlcompress.cli._options import DataOpt, JsonOpt, OverwriteOpt, QuietOpt, ResumeOpt, SeedOpt
from mtlcompress.cli._output import emit, info, make_table, stage_table
from mtlcompress.sparsify.common import StageResult
from mtlcompress.sparsify.pipeline import run_plan
from mtlcompress.sparsify.plan import STAGE_TRAINING, load_plan
from mtlcompress.sparsify.stage_activations import sparsify_activations
from mtlcompress.sparsify.stage_finetune import finetune_deltas
from mtlcompress.sparsify.stage_temporal import sparsify_temporal
from mtlcompress.sparsify.stage_weights import sparsify_weights
from mtlcompress.training.loop import TrainConfig

app = typer.Typer(help="Learn sparse weight deltas and sparse activation deltas against a base task.",
                  no_args_is_help=True)

BaseOpt = Annotated[Path, typer.Option("--base", help="The base task's checkpoint (W_0).")]
TaskOpt = Annotated[Path, typer.Option("--task", help="The sub-task checkpoint (the previous stage's output).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Checkpoint to write.")]
StepsOpt = Annotated[int | None, typer.Option(min=0, help="Optimiser steps (default: the stage's default).")]
LrOpt = Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (default: the stage's).")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Global batch size.")]
SupervisionOpt = Annotated[str, typer.Option(help="labels, distill (from the original checkpoint), or auto "
                                             "(labels when the data has them).")]
GranularityOpt = Annotated[str, typer.Option(help="token (whole token rows; real speed-ups) or element (the paper).")]
StrengthOpt = Annotated[float, typer.Option(min=0.0, help="Activation-delta penalty strength (deeper layers x2).")]
ToleranceOpt = Annotated[float, typer.Option(min=0.0, help="Allowed relative metric drop from thresholds.")]
TokenDensityOpt = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Calibrate thresholds to this "
                                                       "measured delta density instead of a tolerance.")]


def _config(stage: str, steps: int | None, lr: float | None, batch_size: int, seed: int) -> TrainConfig:
    """The stage's defaults (one place: ``STAGE_TRAINING``) with what the user gave."""
    given = {k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None}
    return dataclasses.replace(STAGE_TRAINING[stage], batch_size=batch_size, seed=seed, **given)


def _report(results: Sequence[StageResult], as_json: bool, title: str, extra: dict | None = None) -> None:
    table = stage_table(results, title)
    emit({**(extra or {}), "stages": [r.to_dict() for r in results]}, as_json, table)


@app.command("weights")
def weights(base: BaseOpt, task: TaskOpt, data: DataOpt, out: OutOpt,
            density: Annotated[float, typer.Option(min=0.0, max=1.0, help="Target fraction of backbone weights "
                                                   "that may differ from the base (e.g. 0.02).")] = 0.02,
            method: Annotated[str, typer.Option(help="l0 (learned hard-concrete gates) or magnitude "
                                                "(keep the largest |W_t - W_0|, no training).")] = "l0",
            per_tensor_gates: Annotated[bool, typer.Option(help="Also learn one gate per tensor.")] = False,
            steps: StepsOpt = None, lr: LrOpt = None, batch_size: BatchOpt = 32, seed: SeedOpt = 0,
            supervision: SupervisionOpt = "auto", resume: ResumeOpt = True, overwrite: OverwriteOpt = False,
            as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Stage 1: learn a sparse weight delta at a target density."""
    result = sparsify_weights(base=base, task=task, data=data, out=out, density=density, method=method,
                              per_tensor_gates=per_tensor_gates, supervision=supervision,
                              config=_config("weights", steps, lr, batch_size, seed), resume=resume,
                              overwrite=overwrite, show_progress=not (quiet or as_json))
    _report([result], as_json, "stage 1: sparse weight deltas")


@app.command("finetune")
def finetune(base: BaseOpt, task: TaskOpt, data: DataOpt, out: OutOpt, steps: StepsOpt = None, lr: LrOpt = None,
             batch_size: BatchOpt = 32, seed: SeedOpt = 0, supervision: SupervisionOpt = "auto",
             resume: ResumeOpt = True, overwrite: OverwriteOpt = False, as_json: JsonOpt = False,
             quiet: QuietOpt = False) -> None:
    """Stage 2: fine-tune only the kept delta values (the support is frozen)."""
    result = finetune_deltas(base=base, task=task, data=data, out=out, supervision=supervision,
                             config=_config("finetune", steps, lr, batch_size, seed), resume=resume,
                             overwrite=overwrite, show_progress=not (quiet or as_json))
    _report([result], as_json, "stage 2: fixed-mask fine-tuning")


@app.command("activations")
def activations(base: BaseOpt, task: TaskOpt, data: DataOpt, out: OutOpt, granularity: GranularityOpt = "token",
                strength: StrengthOpt = 0.05, tolerance: ToleranceOpt = 0.02, token_density: TokenDensityOpt = None,
                steps: StepsOpt = None, lr: LrOpt = None, batch_size: BatchOpt = 32, seed: SeedOpt = 0,
                supervision: SupervisionOpt = "auto", resume: ResumeOpt = True, overwrite: OverwriteOpt = False,
                as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Stage 3: sparse activation deltas vs the base task, then calibrated thresholds."""
    result = sparsify_activations(base=base, task=task, data=data, out=out, granularity=granularity,
                                  strength=strength, tolerance=tolerance, token_density=token_density,
                                  supervision=supervision, config=_config("activations", steps, lr, batch_size, seed),
                                  resume=resume, overwrite=overwrite, show_progress=not (quiet or as_json))
    _report([result], as_json, "stage 3: sparse activation deltas")


@app.command("temporal")
def temporal(task: TaskOpt, data: DataOpt, out: OutOpt,
             base: Annotated[Path | None, typer.Option("--base", help="The base checkpoint; omit when --task is "
                                                       "the base task itself.")] = None,
             granularity: GranularityOpt = "token", strength: StrengthOpt = 0.05, tolerance: ToleranceOpt = 0.02,
             token_density: TokenDensityOpt = None,
             max_offset: Annotated[int, typer.Option(min=1, help="Largest frame offset sampled.")] = 3,
             steps: StepsOpt = None, lr: LrOpt = None, batch_size: BatchOpt = 32, seed: SeedOpt = 0,
             supervision: SupervisionOpt = "auto", resume: ResumeOpt = True, overwrite: OverwriteOpt = False,
             as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Stage 4 (video): sparse frame-to-frame activation deltas, then temporal thresholds."""
    result = sparsify_temporal(task=task, base=base, data=data, out=out, granularity=granularity, strength=strength,
                               tolerance=tolerance, token_density=token_density, max_offset=max_offset,
                               supervision=supervision, config=_config("temporal", steps, lr, batch_size, seed),
                               resume=resume, overwrite=overwrite, show_progress=not (quiet or as_json))
    _report([result], as_json, "stage 4: sparse temporal deltas")


@app.command("all")
def run_all(plan: Annotated[Path, typer.Option("--plan", help="Plan file (TOML); see docs/plan.md.")],
            as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Run every stage for every sub-task from one plan; re-run to resume."""
    parsed = load_plan(plan)
    silent = quiet or as_json
    result = run_plan(parsed, show_progress=not silent, log=lambda message: info(message, silent))
    _report(result.results, as_json, f"sparsify all (base: {result.base})",
            extra={k: v for k, v in result.to_dict().items() if k != "stages"})
