"""``mtlcompress export``: combine single-task checkpoints into one bundle file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mtlcompress.cli._options import JsonOpt, OverwriteOpt, QuietOpt, one_of
from mtlcompress.cli._output import emit, make_table
from mtlcompress.errors import PlanError
from mtlcompress.io.outputs import SAFETENSORS_SUFFIXES, check_output


DTYPE_NAMES = ("fp32", "bf16", "fp16")  # bundle.format.SHORT_DTYPE_NAMES, named here so --help needs no torch


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write (.safetensors).")],
    base: Annotated[Path | None, typer.Option("--base", help="Base task checkpoint (its backbone is stored dense).")] = None,
    task: Annotated[list[Path] | None, typer.Option("--task", metavar="PATH",
                                                        help="Sub-task checkpoint; repeat for each task.")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="The `sparsify all` plan: exports each task's "
                                              "last finished stage.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", callback=one_of(DTYPE_NAMES), help=f"Stored weights (base, deltas, heads): "
                                                       f"{', '.join(DTYPE_NAMES)}. bf16 and fp16 halve the bytes; "
                                                       "thresholds and metadata stay exact.")] = "fp32",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,  # accepted by every command; exporting has no progress to silence
) -> None:
    """Write one multi-task bundle: the base backbone, sparse sub-task deltas, all heads."""
    if plan is not None:
        if base is not None or task:
            raise PlanError("give either --plan or --base/--task, not both")
        check_output(out, [plan], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
        base, task = read_export_plan(plan)
    elif base is None:
        raise PlanError("--base is required (or give a --plan)")
    tasks = list(task or [])
    check_output(out, [plan, base, *tasks], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    from mtlcompress.bundle.format import export_bundle  # torch: only once a command runs

    summary = export_bundle(base, tasks, out, dtype=dtype)
    emit(summary, as_json, *_tables(summary))


def read_export_plan(path: Path) -> tuple[Path, list[Path]]:
    """``(base checkpoint, sub-task checkpoints)`` of a sparsify plan: each task's last
    finished stage output (its source checkpoint where no stage has run)."""
    from mtlcompress.sparsify.pipeline import resolve_base
    from mtlcompress.sparsify.plan import load_plan

    plan = load_plan(path)
    base, _ = resolve_base(plan)
    final = plan.final_checkpoints(base)
    return final[base], [checkpoint for task, checkpoint in final.items() if task != base]


def _tables(summary: dict[str, Any]) -> list:
    rows = [[t["task"], t["role"], t["delta_density"], _mb(t["delta_bytes"]), _mb(t["head_bytes"]),
             ", ".join(f"{k} {v}" for k, v in t["layouts"].items()) or "-"] for t in summary["tasks"]]
    totals = summary["totals"]
    sizes = [["bundle file", _mb(totals["bundle_bytes"]), 1.0],
             [f"{totals['source_checkpoints']} source checkpoints", _mb(totals["source_bytes"]),
              totals["ratio_vs_sources"]],
             ["one checkpoint (base)", _mb(totals["one_checkpoint_bytes"]), totals["ratio_vs_one_checkpoint"]]]
    return [make_table(f"bundle {summary['bundle']} (base: {summary['base_task']}, {summary['dtype']})",
                       ["task", "role", "delta density", "delta MB", "head MB", "delta layouts"], rows),
            make_table("sizes", ["file", "MB", "bundle / file"], sizes)]


def _mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20
