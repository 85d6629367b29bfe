"""Run every runtime benchmark and rewrite its section of ``docs/benchmarks.md``.

    python benchmarks/run_all.py [--quick]

Makes the bundles if needed (``make_bundles.py``, cached), then per operating point
times T independent models, the dense engine and the shared engine on images and on a
static-camera clip (``mtlcompress.report.benchmark``), and writes:

* the text between ``<!-- runtime-benchmarks:start -->`` and
  ``<!-- runtime-benchmarks:end -->`` in ``docs/benchmarks.md`` (the file is created
  with the markers if missing; nothing outside the markers is touched);
* the full results as JSON in ``docs/benchmarks-runtime.json``.

Headline: ViT-S/16-224 at 2 % weight deltas and 15 % token deltas. Extra rows: ViT-S at
1 %/5 % weights and 10 %/25 % tokens, and ViT-B/16-224 at 2 %/15 %. ``--quick`` uses
fewer repeats and frames and ViT-S only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _markdown  # noqa: E402
from make_bundles import DEFAULT_CACHE, RANDOM_WEIGHTS_NOTE, BundleSpec, all_specs, make_bundle  # noqa: E402

from mtlcompress.bundle.format import load_bundle  # noqa: E402
from mtlcompress.report.benchmark import benchmark_bundle, static_clip, synthetic_images  # noqa: E402
from mtlcompress.report.compile_peer import compiled_peer  # noqa: E402
from mtlcompress.runtime.allocator import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "runtime-benchmarks"
START, END = _markdown.markers(SECTION)
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
DEFAULT_JSON = ROOT / "docs" / "benchmarks-runtime.json"
INPUT_SEED = 0
FULL = {"repeats": 5, "warmup": 1, "frames": 16}  # video: one period of the default keyframe policy
QUICK = {"repeats": 2, "warmup": 1, "frames": 4}
# Issue #20's trained-like point: a weight delta of 2 % and token deltas of at most 2 %.
TRAINED_LIKE = BundleSpec("vit_small_patch16_224", 0.02, 0.02)


# ------------------------------------------------------------------------------------
# The markdown section.
# ------------------------------------------------------------------------------------
def replace_section(path: Path, body: str) -> None:
    """Rewrite only the runtime section of ``path`` (see ``_markdown.replace_section``)."""
    _markdown.replace_section(SECTION, body, path)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _spread(stats: dict[str, Any]) -> str:
    """Median per image/frame with min-max across repeats, in ms."""
    n = stats["median_s"] / stats["per_item_s"] if stats["per_item_s"] else 1
    return f"{_ms(stats['per_item_s'])} ({_ms(stats['min_s'] / n)}-{_ms(stats['max_s'] / n)})"


def _g(flops: float) -> str:
    return f"{flops / 1e9:.2f}"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _title(spec: dict[str, Any]) -> str:
    return (f"{spec['arch']}, 4 tasks, {spec['weight_density'] * 100:g}% weight deltas, "
            f"{spec['token_density'] * 100:g}% token deltas")


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / max(1, len(values))


def headline_table(row: dict[str, Any]) -> list[str]:
    r, sizes = row["result"], row["sizes"]
    img, vid, fl = r["images"], r["video"], r["flops"]
    t_models = img["independent"]["median_s"]
    lines = [
        "| | T independent models | our dense engine | our shared engine | theoretical limit |",
        "|---|---:|---:|---:|---:|",
        f"| images: ms per image, median (min-max) | {_spread(img['independent'])} | {_spread(img['dense'])} | "
        f"{_spread(img['shared'])} | - |",
        f"| images: speed-up vs T models (wall) | 1.00x | {_x(t_models / img['dense']['median_s'])} | "
        f"{_x(r['ratios']['images']['independent/shared'])} | - |",
        f"| images: GFLOPs per image | {_g(fl['images']['independent'])} | {_g(fl['images']['independent'])} "
        f"(+ simulated thresholds) | {_g(fl['images']['bundle'])} | {_g(fl['images']['limit'])} |",
        f"| images: FLOP reduction vs T models | 1.00x | 1.00x | "
        f"{_x(fl['images']['independent'] / fl['images']['bundle'])} | "
        f"{_x(fl['images']['independent'] / fl['images']['limit'])} |",
    ]
    if vid:
        lines += [
            f"| video: ms per frame, median (min-max) | {_spread(vid['independent'])} | {_spread(vid['dense'])} | "
            f"{_spread(vid['shared_stream'])} (stream) | - |",
            f"| video: speed-up vs T models (wall) | 1.00x | {_x(vid['independent']['median_s'] / vid['dense']['median_s'])}"
            f" | {_x(r['ratios']['video']['independent/shared_stream'])} | - |",
            f"| video: GFLOPs per frame (mean over the clip) | {_g(fl['video']['independent'])} | "
            f"{_g(fl['video']['independent'])} | {_g(fl['video']['stream']['mean_per_frame'])} | "
            f"{_g(fl['images']['limit'])} (no temporal reuse) |",
        ]
    lines.append(f"| bytes on disk, MB | {_mb(sizes['checkpoints'])} ({len(sizes['checkpoint_bytes'])} checkpoints) | "
                 f"{_mb(sizes['bundle'])} (bundle) | {_mb(sizes['bundle'])} (bundle) | "
                 f"{_mb(sizes['limit'])} (base + heads, no deltas) |")
    return lines


def frame_kinds_note(row: dict[str, Any]) -> list[str]:
    """The shared stream's frames by kind, and what one keyframe period averages."""
    r = row["result"]
    kinds, period = r.get("video_frames", {}), r["config"]["keyframe_every"]
    if not {"keyframe", "delta"} <= set(kinds) or period < 2:
        return []
    key, delta = (kinds[k]["median_s"] for k in ("keyframe", "delta"))
    steady = (key + (period - 1) * delta) / period
    t_models = r["video"]["independent"]["per_item_s"]
    return [f"Shared stream, frame by frame (medians): keyframe {_ms(key)} ms (every task exactly), other frames "
            f"{_ms(delta)} ms. Over one keyframe period of {period} frames that averages {_ms(steady)} ms per frame, "
            f"{_x(t_models / steady)} faster than the T models (derived from these medians, not timed as a whole).",
            ""]


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| backbone | weight delta | token delta, target / measured | temporal delta, measured | "
        "images ms: T models / dense / shared | T models / shared (wall) | GFLOPs: T / bundle / limit | "
        "video ms/frame: T models / dense / shared stream | T models / stream (wall) | MB: T ckpts / bundle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, spec, sizes = row["result"], row["spec"], row["sizes"]
        img, vid, fl = r["images"], r["video"], r["flops"]["images"]
        density = r["activation_density"]
        task = _mean(density["images"]["task_mean"])
        temporal = _mean(density["video"].get("temporal_mean", {})) if vid else None
        video = (f"{_ms(vid['independent']['per_item_s'])} / {_ms(vid['dense']['per_item_s'])} / "
                 f"{_ms(vid['shared_stream']['per_item_s'])}") if vid else "-"
        lines.append(
            f"| {spec['arch']} | {spec['weight_density'] * 100:g}% | {spec['token_density'] * 100:g}% / "
            f"{task * 100:.1f}% | {'-' if temporal is None else f'{temporal * 100:.1f}%'} | "
            f"{_ms(img['independent']['per_item_s'])} / {_ms(img['dense']['per_item_s'])} / "
            f"{_ms(img['shared']['per_item_s'])} | {_x(r['ratios']['images']['independent/shared'])} | "
            f"{_g(fl['independent'])} / {_g(fl['bundle'])} / {_g(fl['limit'])} | {video} | "
            f"{_x(r['ratios']['video'].get('independent/shared_stream'))} | "
            f"{_mb(sizes['checkpoints'])} / {_mb(sizes['bundle'])} |")
    return lines


def profile_table(profile: dict[str, Any]) -> list[str]:
    roles = list(profile["seconds"])
    lines = [f"| layer kind | {' | '.join(f'{role} ms' for role in roles)} | total ms | share |",
             "|---|" + "---:|" * (len(roles) + 2)]
    total = profile["sum_s"] or 1.0
    for kind, seconds in profile["by_kind"].items():
        cells = " | ".join(_ms(profile["seconds"][role].get(kind, 0.0)) for role in roles)
        lines.append(f"| {kind} | {cells} | {_ms(seconds)} | {seconds / total * 100:.0f}% |")
    lines.append(f"| sum of parts | {' | '.join(_ms(sum(profile['seconds'][r].values())) for r in roles)} | "
                 f"{_ms(profile['sum_s'])} | wall of the profiled call: {_ms(profile['wall_s'])} ms |")
    return lines


def compile_peer_table(rows: list[dict[str, Any]]) -> list[str]:
    """Images: the shared engine against the T models eager and under torch.compile."""
    peers = [row for row in rows if row.get("compile_peer")]
    if not peers:
        return []
    out = ["### Images: against the T models under torch.compile", "",
           "`mtlcompress.report.compile_peer`: eager T models, compiled T models (`torch.compile`, default mode) and "
           "the shared engine, interleaved in one loop of their own (same repeats).", "",
           "| operating point | T models eager, ms | T models compiled, ms | shared, ms | x vs eager | x vs compiled | "
           "x vs the faster |", "|---|---|---|---|---|---|---|"]
    for row in peers:
        peer = row["compile_peer"]
        img, r = peer["images"], peer["ratios"]
        compiled = (_spread(img["independent_compiled"]) if peer["available"]
                    else f"unavailable ({peer['reason']})")
        out.append(f"| {_title(row['spec'])} | {_spread(img['independent'])} | {compiled} | {_spread(img['shared'])} "
                   f"| {_x(r['independent/shared'])} | {_x(r.get('independent_compiled/shared'))} | "
                   f"{_x(r['best_models/shared'])} |")
    return out


def render(doc: dict[str, Any]) -> str:
    env, rows = doc["environment"], doc["rows"]
    headline = next(row for row in rows if row["headline"])
    config = headline["result"]["config"]
    out = [
        "## Runtime: T single-task models vs the dense and shared engines",
        "",
        "Generated by `benchmarks/run_all.py`; do not edit by hand (re-run the command).",
        "",
        f"- Command: `{doc['command']}`",
        f"- Machine: {env['cpu_model']} ({env['cpu_cores']} cores available), {env['threads']} torch threads, "
        f"device {env['device']} ({env['device_name']})",
        f"- Software: torch {env['torch']}, Python {env['python']}, {env['platform']}",
        *([f"- Load average as the headline row finished (1/5/15 min): "
           f"{' / '.join(f'{v:.1f}' for v in env['load_average'])}"] if env.get("load_average") else []),
        f"- Date: {doc['date']}",
        f"- Protocol: {config['repeats']} timed repeats after {config['warmup']} warm-up, variants interleaved "
        f"round-robin (order rotated each repeat); medians, with min-max in parentheses; batch "
        f"{config['batch']} image; video = a {config['frames']}-frame static-camera synthetic clip, "
        f"keyframe every {config['keyframe_every']} frames or at drift > {config['max_drift']} "
        f"({config['keyframes']} keyframe(s) in the headline run).",
        "- Inputs: rendered synthetic rooms (`mtlcompress.data.synth`, seed 0).",
        f"- Bundles: `benchmarks/make_bundles.py`, {RANDOM_WEIGHTS_NOTE}.",
        "- FLOPs: analytic (`mtlcompress.report.flops`, 1 multiply-add = 2 FLOPs) at the token-delta densities "
        "measured in the timed shared runs; the limit keeps, per sub-task, only the attention matmuls and the "
        "head. Video FLOPs average keyframes (full bundle) and delta frames.",
    ]
    if not doc.get("complete", True):
        out.append(f"- **Incomplete run**: {len(rows)} of {doc['planned_rows']} rows measured before it stopped.")
    if doc["quick"]:
        out.append("- **Quick mode** (`--quick`): few repeats, short clip, ViT-S only: indicative numbers only.")
    out += ["", f"### Headline: {_title(headline['spec'])}", "", *headline_table(headline), "",
            *frame_kinds_note(headline), "### All operating points", "", *rows_table(rows), ""]
    for section, profile in headline["result"]["profile"].items():
        out += [f"### Where the shared engine's time goes (headline, {section}, one profiled call)", "",
                "A separate pass with `SharedEngine(profile=True)`, which synchronises around every part; the timed "
                "runs above are not profiled.", "", *profile_table(profile), ""]
    out += [*compile_peer_table(rows), ""]
    out += ["Ratios are ratios of medians. The full results (every sample, per-layer densities, kernel paths) "
            f"are in `{DEFAULT_JSON.relative_to(ROOT)}`."]
    return "\n".join(out)


# ------------------------------------------------------------------------------------
# Running.
# ------------------------------------------------------------------------------------
def run_row(spec: BundleSpec, cache: Path, settings: dict[str, int], log: Any, compiled: bool = True
            ) -> dict[str, Any]:
    path, meta = make_bundle(spec, cache, log=log)
    bundle = load_bundle(path)
    size = bundle.backbone.img_size
    images = synthetic_images(1, size, seed=INPUT_SEED)
    frames = static_clip(settings["frames"], size, seed=INPUT_SEED) if settings["frames"] else None
    log(f"benchmarking {path.name}")
    result = benchmark_bundle(bundle, images, frames, repeats=settings["repeats"], warmup=settings["warmup"])
    peer = (compiled_peer(bundle, images, repeats=settings["repeats"], warmup=settings["warmup"])
            if compiled else None)
    heads = sum(h.numel() * h.element_size() for t in bundle.tasks.values() for h in t.head.values())
    base = sum(w.numel() * w.element_size() for w in bundle.base_weights.values())
    sizes = {"bundle": meta["bundle_bytes"], "checkpoint_bytes": meta["checkpoint_bytes"],
             "checkpoints": sum(meta["checkpoint_bytes"].values()), "limit": base + heads}
    del bundle
    gc.collect()
    return {"spec": dict(spec.__dict__), "bundle": str(path), "sizes": sizes, "calibration": meta["calibration"],
            "result": result, "compile_peer": peer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the runtime benchmarks and update docs/benchmarks.md.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a shorter clip, ViT-S only")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="bundle cache folder")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown file to update")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="machine-readable results")
    parser.add_argument("--repeats", type=int, default=None, help="override the timed repeats")
    parser.add_argument("--frames", type=int, default=None, help="override the clip length")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--headline-only", action="store_true", help="only the headline operating point")
    parser.add_argument("--no-compiled", action="store_true", help="skip the T models under torch.compile")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite the markdown section from the existing --json-out file")
    args = parser.parse_args(argv)
    if args.render_only:
        replace_section(args.doc, render(json.loads(args.json_out.read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `mtlcompress run` and `bench` do
    settings = dict(QUICK if args.quick else FULL)
    if args.repeats:
        settings["repeats"] = args.repeats
    if args.frames is not None:
        settings["frames"] = args.frames

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    headline, *others = all_specs(args.quick)
    # The trained-like point second: an interrupted run (rows are written as they finish) keeps it.
    specs = [headline] if args.headline_only else [headline, TRAINED_LIKE, *others]
    command = "python benchmarks/run_all.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    rows = []
    for index, spec in enumerate(specs):
        row = run_row(spec, args.cache, settings, log, compiled=not args.no_compiled)
        row["headline"] = index == 0
        rows.append(row)
        # Written after every row, so an interrupted run keeps what it measured (and says so).
        doc = {"command": command, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "quick": args.quick, "settings": settings, "environment": rows[0]["result"]["environment"],
               "rows": rows, "complete": len(rows) == len(specs), "planned_rows": len(specs)}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        replace_section(args.doc, render(doc))
        log(f"wrote {args.doc} and {args.json_out} ({len(rows)}/{len(specs)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
