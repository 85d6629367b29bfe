"""``mtlcompress demo``: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mtlcompress.cli._options import DEMO_PRESET_NAMES, DEMO_STEPS, JsonOpt, QuietOpt
from mtlcompress.cli._output import emit, info, make_table, stage_table
from mtlcompress.io.outputs import check_output


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Working folder; re-running continues where it stopped.")] = Path("demo-out"),
    preset: Annotated[str, typer.Option(help=f"Size of the run: {', '.join(DEMO_PRESET_NAMES)} "
                                        "('quick' is a seconds-long smoke test).")] = "default",
    until: Annotated[str, typer.Option(help=f"Last step to run: {', '.join(DEMO_STEPS)}.")] = "run",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthetic scenes -> single-task models -> sparsify -> bundle -> shared runtime, with a report."""
    if preset not in DEMO_PRESET_NAMES:
        raise typer.BadParameter(f"unknown preset '{preset}'; choose from {', '.join(DEMO_PRESET_NAMES)}")
    if until not in DEMO_STEPS:
        raise typer.BadParameter(f"unknown step '{until}'; choose from {', '.join(DEMO_STEPS)}")
    check_output(out, folder=True, overwrite=True)  # re-running continues in the same folder
    # torch and timm: imported once a command runs, so that `--help` answers at once.
    from mtlcompress.demo import run_demo
    from mtlcompress.sparsify.common import StageResult

    silent = quiet or as_json
    stages = DEMO_STEPS[:DEMO_STEPS.index(until) + 1]
    report = run_demo(out, preset, stages=stages, show_progress=not silent, log=lambda message: info(message, silent))
    tables = [_single_task_table(report)]
    if "sparsify" in report:
        core = ("stage", "task", "out", "delta_density", "metrics", "original_metrics", "primary")
        results = [StageResult(**{k: s[k] for k in core},
                               higher_is_better=report["single_task"][s["task"]]["higher_is_better"],
                               extra={k: v for k, v in s.items() if k not in core})
                   for s in report["sparsify"]["stages"]]
        tables.append(stage_table(results, f"sparsify (base task: {report['sparsify']['base']})"))
    if "run" in report:
        tables.append(_bundle_table(report))
    seconds = ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items())
    emit(report, as_json, *tables, note=f"time: {seconds}; full report: {out / 'demo-report.json'}")


def _single_task_table(report: dict[str, Any]) -> Table:
    rows = []
    for task, result in report["single_task"].items():
        key = result["primary"]
        model, baseline = result["model"][key], result["baseline"][key]
        better = model > baseline if result["higher_is_better"] else model < baseline
        rows.append((task, key, model, baseline, "yes" if better else "NO"))
    return make_table("single-task models on the held-out split",
                      ["task", "metric", "model", "constant baseline", "beats baseline"], rows)


def _bundle_table(report: dict[str, Any]) -> Table:
    run, bundle = report["run"], report["bundle"]
    rows = []
    for task, metrics in run["metrics"].items():
        key = report["single_task"][task]["primary"]
        original = report["single_task"][task]["model"][key]
        density = run["activation_density"].get(task, {})
        dx = sum(density.values()) / len(density) if density else None
        rows.append((task, key, original, metrics[key], run["max_abs_diff"][task],
                     None if dx is None else f"{100 * dx:.1f}%"))
    totals = bundle["totals"]
    title = (f"bundle: {totals['bundle_bytes'] / 2**20:.2f} MiB = {totals['ratio_vs_one_checkpoint']:.2f}x one "
             f"checkpoint; shared engine {run['seconds']['shared']:.2f}s vs dense {run['seconds']['dense']:.2f}s "
             f"on {run['images']} images")
    speedup = run.get("speed", {}).get("speedup", {})
    if speedup.get("images"):
        vs = ", ".join(f"{section} {values['vs_models']:.2f}x" for section, values in speedup.items() if values)
        title += f"; shared engine vs the T single-task models: {vs}"
    return make_table(title, ["task", "metric", "single-task model", "bundle (shared engine)",
                              "max |shared - dense|", "dx density"], rows)
