"""One output helper: every command prints either a rich table for people or JSON for
machines (``--json``), never both, and never progress on stdout."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # torch-heavy; only the annotation needs it
    from mtlcompress.sparsify.common import StageResult

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and break machine parsing.
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def make_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(format_cell(v) for v in row))
    return table


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def emit(data: Mapping[str, Any] | Sequence[Any], as_json: bool, *tables: Table, note: str | None = None) -> None:
    """Print ``data`` as JSON, or the given tables (and an optional note) for people."""
    if as_json:
        print_json(data)
        return
    for table in tables:
        console.print(table)
    if note:
        console.print(note)


def info(message: str, quiet: bool = False) -> None:
    """Human status lines go to stderr so stdout stays clean for ``--json``."""
    if not quiet:
        err_console.print(message)


def stage_table(results: Sequence[StageResult], title: str) -> Table:
    """One row per sparsify stage result (``sparsify`` and ``demo``): densities and
    the primary metric before and after."""
    rows = []
    for r in results:
        change = r.relative_change
        density = r.extra.get("held_out_activation_density", r.extra.get("activation_density",
                                                                      r.extra.get("temporal_density")))
        rows.append((r.task, r.stage, f"{100 * r.delta_density:.2f}%", r.primary,
                     r.original_metrics.get(r.primary), r.metrics.get(r.primary),
                     None if change is None else f"{100 * change:+.2f}%",
                     None if density is None else f"{100 * density:.1f}%"))
    return make_table(title, ["task", "stage", "dW density", "metric", "original", "now", "change", "dx density"],
                      rows)
