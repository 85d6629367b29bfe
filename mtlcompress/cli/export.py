"""``mtlcompress export``: combine single-task checkpoints into one bundle file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from mtlcompress.bundle.format import export_bundle
from mtlcompress.cli._options import JsonOpt
from mtlcompress.cli._output import emit, make_table
from mtlcompress.errors import MtlCompressError, PlanError
from mtlcompress.models.checkpoint import read_checkpoint_info
from mtlcompress.tasks.registry import get_task

# Plan keys this command reads; other top-level *tables* belong to other commands.
_PLAN_KEYS = ("base", "tasks")


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write (.safetensors).")],
    base: Annotated[Path | None, typer.Option("--base", help="Base task checkpoint (its backbone is stored dense).")] = None,
    task: Annotated[list[Path] | None, typer.Option("--task", metavar="PATH",
                                                        help="Sub-task checkpoint; repeat for each task.")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="TOML plan: `base = \"<task>\"` and a \\[tasks] table "
                                              "of task -> checkpoint (paths relative to the plan).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write one multi-task bundle: the base backbone, sparse sub-task deltas, all heads."""
    if plan is not None:
        if base is not None or task:
            raise PlanError("give either --plan or --base/--task, not both")
        base, task = read_export_plan(plan)
    elif base is None:
        raise PlanError("--base is required (or give a --plan)")
    summary = export_bundle(base, list(task or []), out)
    emit(summary, as_json, *_tables(summary))


def read_export_plan(path: Path) -> tuple[Path, list[Path]]:
    """``(base checkpoint, sub-task checkpoints)`` from a plan's ``base`` and ``[tasks]``."""
    try:
        plan = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path}: plan file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: cannot read the plan ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(k for k, v in plan.items() if k not in _PLAN_KEYS and not _is_table(v))
    if unknown:
        raise PlanError(f"{path}: unknown key '{unknown[0]}' (export reads 'base' and the 'tasks' table)")
    tasks, base = plan.get("tasks"), plan.get("base")
    if not isinstance(tasks, dict) or not tasks:
        raise PlanError(f"{path}: needs a 'tasks' table mapping task names to checkpoint paths")
    if not isinstance(base, str):
        raise PlanError(f"{path}: needs `base = \"<task name>\"` naming one of the tasks")
    if base not in tasks:
        raise PlanError(f"{path}: base task '{base}' is not in the 'tasks' table ({', '.join(tasks)})")
    paths: dict[str, Path] = {}
    for name, value in tasks.items():
        try:
            get_task(name)
        except MtlCompressError as exc:
            raise PlanError(f"{path}: 'tasks' table: {exc}") from None
        if not isinstance(value, str):
            raise PlanError(f"{path}: tasks.{name} must be a checkpoint path string")
        checkpoint = path.parent / value
        if not checkpoint.is_file():
            raise PlanError(f"{path}: tasks.{name} = '{value}': file not found ({checkpoint})")
        found = read_checkpoint_info(checkpoint).task
        if found != name:
            raise PlanError(f"{path}: tasks.{name} = '{value}' is a '{found}' checkpoint")
        paths[name] = checkpoint
    return paths[base], [p for name, p in paths.items() if name != base]


def _is_table(value: Any) -> bool:
    """A TOML table or array of tables: another command's section, not ours to judge."""
    return isinstance(value, dict) or (isinstance(value, list) and bool(value)
                                       and all(isinstance(v, dict) for v in value))


def _tables(summary: dict[str, Any]) -> list:
    rows = [[t["task"], t["role"], t["delta_density"], _mb(t["delta_bytes"]), _mb(t["head_bytes"]),
             ", ".join(f"{k} {v}" for k, v in t["layouts"].items()) or "-"] for t in summary["tasks"]]
    totals = summary["totals"]
    sizes = [["bundle file", _mb(totals["bundle_bytes"]), 1.0],
             [f"{totals['source_checkpoints']} source checkpoints", _mb(totals["source_bytes"]),
              totals["ratio_vs_sources"]],
             ["one checkpoint (base)", _mb(totals["one_checkpoint_bytes"]), totals["ratio_vs_one_checkpoint"]]]
    return [make_table(f"bundle {summary['bundle']} (base: {summary['base_task']})",
                       ["task", "role", "delta density", "delta MB", "head MB", "delta layouts"], rows),
            make_table("sizes", ["file", "MB", "bundle / file"], sizes)]


def _mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20
