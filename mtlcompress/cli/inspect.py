"""``mtlcompress inspect``: what a bundle holds and what it saves, per task and layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mtlcompress.cli._options import DeviceOpt, JsonOpt, QuietOpt
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.errors import MtlCompressError
from mtlcompress.io.outputs import HTML_SUFFIXES, check_output


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def inspect(
    bundle_path: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle file written by `mtlcompress export`.")],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder: measure activation densities, kernel "
                                              "paths and accuracy on its val split and first video clip.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")] = None,
    max_images: Annotated[int, typer.Option("--max-images", help="Val images to run with --data.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --html file if it exists.")] = False,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-task and per-layer densities, bytes, FLOPs (and accuracy with --data) of a bundle."""
    if max_images < 1:
        raise MtlCompressError(f"--max-images must be >= 1, got {max_images}")
    if html is not None:  # before the work, not after it
        check_output(html, [bundle_path, data], overwrite=overwrite, suffixes=HTML_SUFFIXES, label="--html")
    # torch: imported once a command runs, so that `--help` answers at once.
    from mtlcompress.bundle.format import load_bundle
    from mtlcompress.devices import resolve_device
    from mtlcompress.report.html import write_html_report
    from mtlcompress.report.inspect import HTML_EXAMPLES, inspect_bundle

    target = resolve_device(device)  # --data runs the bundle there
    bundle = load_bundle(bundle_path)
    report = inspect_bundle(bundle, bundle_path, data=data, max_images=max_images,
                            show_progress=not (quiet or as_json),
                            examples=HTML_EXAMPLES if html is not None else 0, device=target)
    if html is not None:
        write_html_report(report, html)
        info(f"wrote {html}", quiet=quiet or as_json)
    emit(report, as_json, *_tables(report), note="\n".join(report["notes"]) or None)


def _tables(report: dict[str, Any]) -> list:
    tasks = report["tasks"]
    summary = [[name, t["role"], t["delta_density"], t["delta_bytes"], t["head_bytes"], t["activation_density"],
                t["temporal_density"], _accuracy(t["accuracy"])] for name, t in tasks.items()]
    subs = [name for name, t in tasks.items() if t["role"] != "base"]
    layer_rows = []
    for layer in report["bundle"]["layers"]:
        row: list[Any] = [layer]
        for name in subs:
            entry = tasks[name]["layers"][layer]
            act = "-" if entry["activation_density"] is None else f"{entry['activation_density']:.3g}"
            row.append(f"{entry['weight_density']:.3g} / {act} / {entry['layout']['weight'] or '-'}"
                       + (f" / {entry['path']}" if entry["path"] else ""))
        layer_rows.append(row)
    totals = report["totals"]
    flops = totals["flops"]
    size_rows = [[name, totals[key]["independent"], totals[key]["bundle"], totals[key]["ratio"]]
                 for name, key in (("parameters", "params"), ("bytes", "bytes"))]
    size_rows += [[f"GFLOPs / image ({label})", flops["independent"]["total"] / 1e9, flops[key]["total"] / 1e9,
                   flops[f"ratio_{key}"]] for label, key in (("b: bundle", "bundle"), ("c: limit", "limit"))]
    return [
        make_table(f"bundle {report['bundle']['path']} (base: {report['bundle']['base_task']})",
                   ["task", "role", "dW density", "dW bytes", "head bytes", "act. density", "temporal",
                    "accuracy: original -> bundle"], summary),
        make_table("per layer: weight density / activation density / layout (/ kernel path)", ["layer", *subs],
                   layer_rows),
        make_table("totals (independent models vs bundle)", ["", "independent", "bundle", "bundle / independent"],
                   size_rows),
    ]


def _accuracy(accuracy: dict[str, Any] | None) -> str | None:
    if not accuracy:
        return None
    # Same images as the bundle when the original model was found; else the stored number.
    original, bundled = accuracy.get("original_same_images") or accuracy["original"], accuracy["bundle"]
    shared = [k for k in bundled if k in original] or list(bundled)
    if not shared:
        return None
    key = shared[0]
    before = f"{original[key]:.4g}" if key in original else "?"
    return f"{key} {before} -> {bundled[key]:.4g}"
