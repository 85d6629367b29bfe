"""``mtlcompress sparsify``: one sub-command per stage, and ``all`` for a plan."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mtlcompress.cli._options import (
    AccumulateOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    OverwriteOpt,
    PrecisionOpt,
    QuietOpt,
    ResumeOpt,
    WorkersOpt,
)
from mtlcompress.cli._output import emit, info, stage_table
from mtlcompress.io.outputs import SAFETENSORS_SUFFIXES, check_output
from mtlcompress.sparsify.config import STAGE_CONFIGS, OptionSpec, StageConfig  # torch-free: the options
from mtlcompress.training.config import TrainConfig

if TYPE_CHECKING:
    from mtlcompress.sparsify.common import StageResult
    from mtlcompress.sparsify.plan import Plan

app = typer.Typer(help="Learn sparse weight deltas and sparse activation deltas against a base task.",
                  no_args_is_help=True)

BaseOpt = Annotated[Path, typer.Option("--base", help="The base task's checkpoint (W_0).")]
TaskOpt = Annotated[Path, typer.Option("--task", help="The sub-task checkpoint (the previous stage's output).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Checkpoint to write.")]
SupervisionOpt = Annotated[str, typer.Option(help="labels, distill (from the original checkpoint), or auto "
                                             "(labels when the data has them).")]
# The training options a stage command offers (a plan's stage table accepts every TrainConfig field).
CLI_TRAINING_OPTIONS = ("steps", "lr", "batch_size", "seed", "accumulate", "precision", "device", "workers")
# Options every model-running command shares: the same flag and help as train's and evaluate's.
_SHARED_ALIASES = {"device": DeviceOpt, "precision": PrecisionOpt, "workers": WorkersOpt, "accumulate": AccumulateOpt}


def _typer_option(spec: OptionSpec) -> inspect.Parameter:
    """One command parameter from an option's definition: its name, type, default, help and range."""
    kind = spec.type | None if spec.optional else spec.type
    bounds = {"min": spec.minimum, "max": spec.maximum} if spec.type in (int, float) else {}
    annotation = _SHARED_ALIASES.get(spec.name) or Annotated[kind, typer.Option(help=spec.help, **bounds)]
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default, annotation=annotation)


def stage_options(stage: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one option per field of the stage's config, plus the CLI's training options.

    The decorated body takes ``options`` (the stage's checked config) and ``training``
    (its ``TrainConfig``) instead; every name, default, range and help comes from
    ``sparsify/config.py``, so the command cannot drift from the plan or the docs.
    """
    config: type[StageConfig] = STAGE_CONFIGS[stage]
    training = {spec.name: spec for spec in config.training_specs() if spec.name in CLI_TRAINING_OPTIONS}
    generated = [_typer_option(spec) for spec in config.option_specs()] + [_typer_option(training[name])
                                                                            for name in CLI_TRAINING_OPTIONS]

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(body, eval_str=True).parameters.values()
               if p.name not in ("options", "training")]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in required]

        @functools.wraps(body)
        def command(**kwargs: Any) -> None:
            options = config(**{spec.name: kwargs.pop(spec.name) for spec in config.option_specs()})
            options.validate()  # what typer's min/max cannot say: open bounds, NaN, choices
            given = {name: training[name].check(kwargs.pop(name), training[name].flag) for name in training}
            from mtlcompress.devices import resolve_device  # torch: only once a command runs

            resolve_device(given["device"])  # before loading anything: a missing GPU is a usage error
            body(options=options, training=config.train_config(**given), **kwargs)

        parameters = [*(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in required), *generated, *rest]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def _report(results: Sequence[StageResult], as_json: bool, title: str, extra: dict | None = None) -> None:
    table = stage_table(results, title)
    emit({**(extra or {}), "stages": [r.to_dict() for r in results]}, as_json, table)


def _progress(quiet: bool, as_json: bool) -> bool:
    return not (quiet or as_json)


@app.command("weights", help=STAGE_CONFIGS["weights"].__doc__)
@stage_options("weights")
def weights(base: BaseOpt, task: TaskOpt, data: DataOpt, out: OutOpt, options: StageConfig, training: TrainConfig,
            supervision: SupervisionOpt = "auto", resume: ResumeOpt = True, overwrite: OverwriteOpt = False,
            as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    check_output(out, [base, task, data], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    from mtlcompress.sparsify.stage_weights import sparsify_weights  # torch: only once a command runs

    result = sparsify_weights(base=base, task=task, data=data, out=out, **options.as_kwargs(), supervision=supervision,
                              config=training, resume=resume, overwrite=overwrite,
                              show_progress=_progress(quiet, as_json))
    _report([result], as_json, "stage 1: sparse weight deltas")


@app.command("finetune", help=STAGE_CONFIGS["finetune"].__doc__)
@stage_options("finetune")
def finetune(base: BaseOpt, task: TaskOpt, data: DataOpt, out: OutOpt, options: StageConfig, training: TrainConfig,
             supervision: SupervisionOpt = "auto", resume: ResumeOpt = True, overwrite: OverwriteOpt = False,
             as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    check_output(out, [base, task, data], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    from mtlcompress.sparsify.stage_finetune import finetune_deltas  # torch: only once a command runs

    result = finetune_deltas(base=base, task=task, data=data, out=out, **options.as_kwargs(), supervision=supervision,
                             config=training, resume=resume, overwrite=overwrite,
                             show_progress=_progress(quiet, as_json))
    _report([result], as_json, "stage 2: fixed-mask fine-tuning")


@app.command("activations", help=STAGE_CONFIGS["activations"].__doc__)
@stage_options("activations")
def activations(base: BaseOpt, task: TaskOpt, data: DataOpt, out: OutOpt, options: StageConfig,
                training: TrainConfig, supervision: SupervisionOpt = "auto", resume: ResumeOpt = True,
                overwrite: OverwriteOpt = False, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    check_output(out, [base, task, data], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    from mtlcompress.sparsify.stage_activations import sparsify_activations  # torch: only once a command runs

    result = sparsify_activations(base=base, task=task, data=data, out=out, **options.as_kwargs(),
                                  supervision=supervision, config=training, resume=resume, overwrite=overwrite,
                                  show_progress=_progress(quiet, as_json))
    _report([result], as_json, "stage 3: sparse activation deltas")


@app.command("temporal", help=STAGE_CONFIGS["temporal"].__doc__)
@stage_options("temporal")
def temporal(task: TaskOpt, data: DataOpt, out: OutOpt, options: StageConfig, training: TrainConfig,
             base: Annotated[Path | None, typer.Option("--base", help="The base checkpoint; omit when --task is "
                                                       "the base task itself.")] = None,
             supervision: SupervisionOpt = "auto", resume: ResumeOpt = True, overwrite: OverwriteOpt = False,
             as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    check_output(out, [base, task, data], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    from mtlcompress.sparsify.stage_temporal import sparsify_temporal  # torch: only once a command runs

    result = sparsify_temporal(task=task, base=base, data=data, out=out, **options.as_kwargs(),
                               supervision=supervision, config=training, resume=resume, overwrite=overwrite,
                               show_progress=_progress(quiet, as_json))
    _report([result], as_json, "stage 4: sparse temporal deltas")


@app.command("all")
def run_all(plan: Annotated[Path, typer.Option("--plan", help="Plan file (TOML); see docs/plan.md.")],
            device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", workers: WorkersOpt = 0,
            as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Run every stage for every sub-task from one plan; re-run to resume.

    --device, --precision and --workers apply to every stage whose table in the plan
    does not set them."""
    # torch: imported once a command runs, so that `--help` answers at once.
    from mtlcompress.devices import resolve_device
    from mtlcompress.sparsify.pipeline import run_plan
    from mtlcompress.sparsify.plan import load_plan
    from mtlcompress.training.precision import check_precision

    resolve_device(device)
    check_precision(precision)
    parsed = load_plan(plan)
    check_plan_outputs(parsed)
    silent = quiet or as_json
    result = run_plan(parsed, show_progress=not silent, log=lambda message: info(message, silent),
                      training={"device": device, "precision": precision, "workers": workers})
    _report(result.results, as_json, f"sparsify all (base: {result.base})",
            extra={k: v for k, v in result.to_dict().items() if k != "stages"})


def check_plan_outputs(plan: Plan) -> None:
    """The plan's ``out`` is a folder, and no stage output is one of the plan's checkpoints
    or its data. Existing stage outputs are finished stages (a re-run resumes), not clashes."""
    inputs = [plan.data, *plan.tasks.values()]
    check_output(plan.out, inputs, folder=True, overwrite=True, label="the plan's out")
    for task in plan.tasks:
        for stage in STAGE_CONFIGS:
            check_output(plan.stage_output(task, stage), inputs, overwrite=True, suffixes=SAFETENSORS_SUFFIXES,
                         label=f"the {stage} output of {task}")
