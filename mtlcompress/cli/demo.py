"""``mtlcompress demo``: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.cli._options import JsonOpt, QuietOpt
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.demo import DEMO_PRESETS, run_demo


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Working folder; re-running continues where it stopped.")] = Path("demo-out"),
    preset: Annotated[str, typer.Option(help=f"Size of the run: {', '.join(DEMO_PRESETS)} "
                                        "('quick' is a seconds-long smoke test).")] = "default",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthetic scenes -> shared pretraining -> one single-task model per task -> evaluation."""
    if preset not in DEMO_PRESETS:
        raise typer.BadParameter(f"unknown preset '{preset}'; choose from {', '.join(DEMO_PRESETS)}")
    silent = quiet or as_json
    report = run_demo(out, preset, show_progress=not silent, log=lambda message: info(message, silent))
    rows = []
    for task, result in report["single_task"].items():
        key = result["primary"]
        model, baseline = result["model"][key], result["baseline"][key]
        better = model > baseline if result["higher_is_better"] else model < baseline
        rows.append((task, key, model, baseline, "yes" if better else "NO"))
    table = make_table("single-task models on the held-out split", ["task", "metric", "model", "constant baseline",
                                                                     "beats baseline"], rows)
    seconds = ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items())
    emit(report, as_json, table, note=f"time: {seconds}; report: {out / 'demo-report.json'}")
