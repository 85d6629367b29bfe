"""One self-contained HTML page for an ``inspect_bundle`` report.

Everything is inline: CSS in a ``<style>`` block, charts as SVG drawn here and example
predictions as base64 PNG ``data:`` images, with no JavaScript, fonts or network, so
the file can be mailed or archived and still open the same way. Hovering a heat-map cell or bar shows its exact value (SVG
``<title>``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.atomic import write_text_atomic
from mtlcompress.io.image_size import describe_image_size, image_size

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
_KIND_SHORT = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
_LOWER_IS_BETTER = ("rmse", "abs_rel", "mean_angle", "median_angle", "rmse_angle", "mae")
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1150px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
p.meta{color:#555;margin:2px 0}.note{background:#fff8e1;border-left:4px solid #f2b600;padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}svg{display:block;margin:6px 0}
svg text{font-family:inherit}.small{font-size:12px;color:#666}
figure{display:inline-block;margin:0 6px 6px 0;text-align:center}figcaption{font-size:11px;color:#555}
img.map{image-rendering:pixelated;width:128px;height:128px;border:1px solid #ddd}
"""


def write_html_report(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` as one self-contained HTML file that opens the same anywhere.

    Args:
        report: from ``inspect_bundle`` (with ``examples=N`` the page shows example
            predictions, bundle vs original model).
        path: the HTML file, written atomically (its folder is created).
    """
    write_text_atomic(path, render_html(report))


def render_html(report: Mapping[str, Any]) -> str:
    """The page as a string (``write_html_report`` writes it)."""
    info, tasks = report["bundle"], report["tasks"]
    colors = {task: PALETTE[i % len(PALETTE)] for i, task in enumerate(info["tasks"])}
    backbone = info["backbone"]
    sections = [
        "<h1>mtlcompress bundle report</h1>",
        f"<p class=meta>{escape(str(info['path'] or '(in memory)'))} &middot; base task "
        f"<b>{escape(info['base_task'])}</b> &middot; {escape(str(backbone.get('arch')))} "
        f"({escape(_image_size(backbone.get('img_size')))}, patch {backbone.get('patch_size')}, "
        f"dim {backbone.get('embed_dim')}, "
        f"depth {backbone.get('depth')}) &middot; {info['tokens']} tokens &middot; schema {report['schema']}</p>",
        *(f"<p class=note>{escape(note)}</p>" for note in report.get("notes", [])),
        "<h2>Tasks</h2>", _summary_table(report),
        "<h2>Weight-delta density per layer</h2>",
        "<p class=small>Fraction of the layer's weight entries that differ from the base task (log colour scale; "
        "the base task has none).</p>",
        _heatmap(report, "weight_density", log=True),
    ]
    if any(layer["activation_density"] is not None for t in tasks.values() for layer in t["layers"].values()):
        sections += ["<h2>Measured activation-delta density per layer</h2>",
                     "<p class=small>Kept fraction of the activation delta against the base task on "
                     f"{report['data']['images']} image(s); grey: no threshold (the layer runs exactly).</p>",
                     _heatmap(report, "activation_density", log=False)]
    if any(layer["temporal_density"] is not None for t in tasks.values() for layer in t["layers"].values()):
        sections += ["<h2>Measured temporal density per layer</h2>",
                     f"<p class=small>Kept fraction against the previous frame on clip "
                     f"{escape(str(report['data']['clip']))}.</p>",
                     _heatmap(report, "temporal_density", log=False)]
    flops = report["totals"]["flops"]
    source = ("measured activation densities" if report["activation_density_source"] == "measured"
              else f"assumed activation density {report['assumed_density']:g}")
    sections += [
        "<h2>FLOPs per image</h2>",
        f"<p class=small>(a) independent dense models, (b) the bundle with {escape(source)}, (c) the limit: base "
        f"plus only attention and heads per sub-task. {escape(report['flops_convention'])}.</p>",
        _stacked_bars([("(a) independent", {t: tasks[t]["flops"]["independent"] for t in tasks}),
                       ("(b) bundle", {t: tasks[t]["flops"]["bundle"] for t in tasks}),
                       ("(c) limit", {t: tasks[t]["flops"]["limit"] for t in tasks})], colors, _flops_text),
        f"<p class=small>bundle / independent = {_ratio(flops['ratio_bundle'])}; limit / independent = "
        f"{_ratio(flops['ratio_limit'])}</p>",
        "<h2>Bytes</h2>",
        "<p class=small>Tensor payload: dense backbone and head per independent model; in the bundle the base "
        "backbone, each sub-task's stored delta (in its layout) and every head.</p>",
        _stacked_bars([("independent", {t: tasks[t]["bytes"]["independent"] for t in tasks}),
                       ("bundle", {t: tasks[t]["bytes"]["bundle"] for t in tasks})], colors, _bytes_text),
        f"<p class=small>bundle / independent = {_ratio(report['totals']['bytes']['ratio'])}</p>",
    ]
    accuracy = {t: v["accuracy"] for t, v in tasks.items() if v.get("accuracy")}
    if accuracy:
        sections += ["<h2>Accuracy vs activation density</h2>",
                     f"<p class=small>The original single-task model (dense, density 1) against the bundle through "
                     f"the shared engine at its measured mean activation density, both on the same "
                     f"{report['data']['images']} image(s). A hollow point is a stored number, measured on other "
                     f"images (the original model was not found): not a like-for-like comparison.</p>",
                     _accuracy_charts(report, accuracy, colors)]
    if report.get("examples"):
        sections += ["<h2>Example predictions</h2>",
                     "<p class=small>The bundle's prediction next to the original single-task model's, in each "
                     "task's colour map.</p>",
                     _example_grid(report["examples"])]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
            f"<title>mtlcompress report: {escape(str(info['path'] or 'bundle'))}</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# ------------------------------------------------------------------ pieces


def _summary_table(report: Mapping[str, Any]) -> str:
    head = ["task", "role", "delta density", "delta bytes", "head bytes", "act. density", "temporal density",
            "FLOPs (a)", "FLOPs (b)", "FLOPs (c)"]
    rows = []
    for task, t in report["tasks"].items():
        cells = [task, t["role"], _num(t["delta_density"]), _bytes_text(t["delta_bytes"]),
                 _bytes_text(t["head_bytes"]), _num(t["activation_density"]), _num(t["temporal_density"]),
                 _flops_text(t["flops"]["independent"]), _flops_text(t["flops"]["bundle"]),
                 _flops_text(t["flops"]["limit"])]
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _heatmap(report: Mapping[str, Any], key: str, log: bool) -> str:
    layers: Sequence[str] = report["bundle"]["layers"]
    tasks = list(report["tasks"])
    label_w, top = 110, 58
    cell = max(8, min(26, 960 // max(1, len(layers))))
    width, height = label_w + cell * len(layers) + 150, top + max(22 * len(tasks), 14 * 5) + 10
    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role=img>']
    for j, layer in enumerate(layers):
        block, kind = layer.split(".", 2)[1:]
        x = label_w + j * cell + cell / 2
        parts.append(f'<text x="{x:.1f}" y="{top - 4}" font-size="10" transform="rotate(-60 {x:.1f} {top - 4})">'
                     f'{escape(block)}.{escape(_KIND_SHORT.get(kind, kind))}</text>')
    for i, task in enumerate(tasks):
        y = top + 22 * i
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" font-size="12" text-anchor="end">{escape(task)}</text>')
        for j, layer in enumerate(layers):
            value = report["tasks"][task]["layers"][layer][key]
            fill = "#e0e0e0" if value is None else _heat_color(value, log)
            label = "no threshold" if value is None else f"{value:.4g}"
            parts.append(f'<rect x="{label_w + j * cell}" y="{y}" width="{cell - 1}" height="20" fill="{fill}">'
                         f'<title>{escape(task)} {escape(layer)}: {label}</title></rect>')
    legend_x = label_w + cell * len(layers) + 14
    for k in range(5):
        value = 10 ** (-4 + k) if log else k / 4
        parts.append(f'<rect x="{legend_x}" y="{top + 14 * k}" width="12" height="12" '
                     f'fill="{_heat_color(value, log)}" stroke="#999" stroke-width="0.5"/>'
                     f'<text x="{legend_x + 16}" y="{top + 14 * k + 10}" font-size="10">{value:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _heat_color(value: float, log: bool) -> str:
    """White (0) to dark blue (1); the log scale spans 1e-4..1 so sparse deltas show."""
    if log:
        t = 0.0 if value <= 0 else min(1.0, max(0.0, (math.log10(value) + 4) / 4)) * 0.9 + 0.1
    else:
        t = min(1.0, max(0.0, value))
    r, g, b = (round(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def _stacked_bars(bars: Sequence[tuple[str, Mapping[str, float]]], colors: Mapping[str, str], fmt) -> str:  # noqa: ANN001
    label_w, bar_w, row = 130, 760, 34
    peak = max((sum(values.values()) for _, values in bars), default=0) or 1
    height = row * len(bars) + 34
    parts = [f'<svg width="{label_w + bar_w + 120}" height="{height}" role=img>']
    for i, (name, values) in enumerate(bars):
        y, x = 6 + row * i, float(label_w)
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" font-size="12" text-anchor="end">{escape(name)}</text>')
        for task, value in values.items():
            w = bar_w * value / peak
            parts.append(f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="24" fill="{colors[task]}">'
                         f'<title>{escape(name)} {escape(task)}: {escape(fmt(value))}</title></rect>')
            x += w
        parts.append(f'<text x="{x + 6:.2f}" y="{y + 17}" font-size="12">{escape(fmt(sum(values.values())))}</text>')
    x = label_w
    for task, color in colors.items():
        y = 10 + row * len(bars)
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color}"/>'
                     f'<text x="{x + 16}" y="{y + 10}" font-size="11">{escape(task)}</text>')
        x += 24 + 7 * len(task)
    parts.append("</svg>")
    return "".join(parts)


def _original_point(accuracy: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The original's metrics to plot, and whether they were measured on the same images
    (reports written before ``original_same_images`` existed only have stored ones)."""
    measured = accuracy.get("original_same_images")
    if measured is not None:
        return measured, True
    return accuracy.get("stored") or accuracy.get("original") or {}, False


def _primary_metric(accuracy: Mapping[str, Mapping[str, float]]) -> str | None:
    original, bundled = _original_point(accuracy)[0], accuracy.get("bundle") or {}
    shared = [k for k in bundled if k in original and _finite(original[k]) and _finite(bundled[k])]
    usable = shared or [k for k in bundled if _finite(bundled[k])]
    return usable[0] if usable else None


def _accuracy_charts(report: Mapping[str, Any], accuracy: Mapping[str, Any], colors: Mapping[str, str]) -> str:
    charts = []
    w, h, pad = 300, 190, 42
    for task, acc in accuracy.items():
        metric = _primary_metric(acc)
        if metric is None:
            continue
        t = report["tasks"][task]
        density = 1.0 if t["role"] == "base" or t["activation_density"] is None else t["activation_density"]
        points = [("bundle", density, acc["bundle"][metric], colors[task], True)]
        original, same_images = _original_point(acc)
        if _finite(original.get(metric)):
            points.insert(0, ("original" if same_images else "original (stored)", 1.0, original[metric], "#555",
                              same_images))
        if len(points) == 2 and points[0][1:3] == points[1][1:3] and same_images:  # e.g. the base task
            points = [("original = bundle", density, acc["bundle"][metric], colors[task], True)]
        values = [p[2] for p in points]
        lo, hi = min(values), max(values)
        span = (hi - lo) or max(abs(hi), 1.0) * 0.1
        lo, hi = lo - 0.15 * span, hi + 0.15 * span
        better = "lower is better" if metric in _LOWER_IS_BETTER else "higher is better"
        parts = [f'<svg width="{w}" height="{h}" role=img '
                 f'style="display:inline-block;margin-right:10px">',
                 f'<rect x="{pad}" y="20" width="{w - pad - 10}" height="{h - 60}" fill="#fafafa" stroke="#ccc"/>',
                 f'<text x="{pad}" y="14" font-size="12"><tspan font-weight="bold">{escape(task)}</tspan> '
                 f'{escape(metric)} ({better})</text>',
                 f'<text x="{pad}" y="{h - 24}" font-size="10">0</text>',
                 f'<text x="{w - 10}" y="{h - 24}" font-size="10" text-anchor="end">1</text>',
                 f'<text x="{(w + pad) / 2}" y="{h - 8}" font-size="10" text-anchor="middle">activation density</text>',
                 f'<text x="{pad - 4}" y="{24}" font-size="10" text-anchor="end">{hi:.3g}</text>',
                 f'<text x="{pad - 4}" y="{h - 40}" font-size="10" text-anchor="end">{lo:.3g}</text>']
        for name, x_value, y_value, color, filled in points:
            x = pad + (w - pad - 10) * x_value
            y = 20 + (h - 60) * (hi - y_value) / (hi - lo)
            paint = f'fill="{color}"' if filled else f'fill="white" stroke="{color}" stroke-width="2"'
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" {paint}><title>{escape(name)}: '
                         f'{escape(metric)} {y_value:.4g} at density {x_value:.3g}</title></circle>'
                         f'<text x="{x + (-8 if x_value > 0.5 else 8):.1f}" y="{y - 8:.1f}" font-size="10" '
                         f'text-anchor="{"end" if x_value > 0.5 else "start"}">{escape(name)}</text>')
        parts.append("</svg>")
        charts.append("".join(parts))
    return "<div>" + "".join(charts) + "</div>"


def _figure(png: str | None, caption: str) -> str:
    image = ('<div class="map small">not available</div>' if png is None else
             f'<img class=map alt="{escape(caption)}" src="data:image/png;base64,{png}">')
    return f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>"


def _example_grid(examples: Sequence[Mapping[str, Any]]) -> str:
    """One row per image: the photo, then per task the bundle's and the original's map."""
    rows = []
    for example in examples:
        cells = [_figure(example["image"], str(example["stem"]))]
        for task, maps in example["tasks"].items():
            cells.append(_figure(maps["bundle"], f"{task}: bundle"))
            cells.append(_figure(maps.get("original"), f"{task}: original"))
        rows.append("<div>" + "".join(cells) + "</div>")
    return "".join(rows)


# ------------------------------------------------------------------ formatting


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _flops_text(value: float) -> str:
    for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} FLOPs"


def _bytes_text(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def _image_size(value: Any) -> str:
    """``[H, W]`` (or an old report's single int) as the backbone describes it."""
    try:
        return describe_image_size(image_size(value))
    except MtlCompressError:
        return f"{value} px"
