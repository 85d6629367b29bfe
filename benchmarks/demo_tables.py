"""Rewrite the demo section of docs/benchmarks.md from a demo report.

    mtlcompress demo --out demo-out          # writes demo-out/demo-report.json
    python benchmarks/demo_tables.py demo-out/demo-report.json [--wall-seconds S]

``--wall-seconds`` records the measured wall-clock of the demo command (e.g. from
`/usr/bin/time`), since the report only holds per-step times.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from _markdown import replace_section, table

from mtlcompress.runtime.calibration import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report", type=Path)
    parser.add_argument("--wall-seconds", type=float)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    single = report["single_task"]
    parts = [f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}. "
             f"Command: `mtlcompress demo --out {args.report.parent}` (preset `{report['preset']}`), then "
             f"`python benchmarks/demo_tables.py {args.report}"
             + (f" --wall-seconds {args.wall_seconds:.0f}`." if args.wall_seconds else "`.")]
    seconds = report["seconds"]
    timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
    wall = f" Whole command: {args.wall_seconds / 60:.1f} min wall-clock." if args.wall_seconds else ""
    parts.append(f"Time per step: {timing}.{wall}")
    parts.append("### Single-task models vs a trivial baseline (held-out split)\n\n" + table(
        ["task", "metric", "model", "constant baseline"],
        [[t, r["primary"], r["model"][r["primary"]], r["baseline"][r["primary"]]] for t, r in single.items()]))
    if "sparsify" in report:
        rows = []
        for stage in report["sparsify"]["stages"]:
            key = stage["primary"]
            change = stage.get("relative_change")
            dx = stage.get("held_out_activation_density", stage.get("activation_density"))
            thresholded = stage.get("thresholded_metrics", {}).get(key)
            rows.append([stage["task"], stage["stage"], f"{100 * stage['delta_density']:.2f}%", key,
                         stage["original_metrics"].get(key), stage["metrics"].get(key),
                         None if change is None else f"{100 * change:+.2f}%",
                         None if dx is None else f"{100 * dx:.1f}%", thresholded])
        parts.append(f"### Sparsify (base: {report['sparsify']['base']})\n\n"
                     "`change` is relative to the original single-task checkpoint (+ = better); `dx density` is "
                     "the kept fraction of token deltas over all tapped layers at the calibrated thresholds, and "
                     "`with thresholds` the held-out metric with them applied.\n\n" + table(
                         ["task", "stage", "dW density", "metric", "original", "after stage", "change",
                          "dx density", "with thresholds"], rows))
    if "run" in report:
        run, totals = report["run"], report["bundle"]["totals"]
        rows = []
        for task, metrics in run["metrics"].items():
            key = single[task]["primary"]
            density = run["activation_density"].get(task, {})
            rows.append([task, key, single[task]["model"][key], metrics[key], run["max_abs_diff"][task],
                         f"{100 * sum(density.values()) / len(density):.1f}%" if density else "-"])
        parts.append(
            f"### The bundle\n\nFile: {totals['bundle_bytes'] / 2**20:.2f} MiB, "
            f"{totals['ratio_vs_one_checkpoint']:.2f}x one checkpoint ({totals['source_checkpoints']} "
            f"checkpoints would be {totals['source_bytes'] / 2**20:.2f} MiB). On {run['images']} held-out images: "
            f"shared engine {run['seconds']['shared']:.2f} s, dense engine {run['seconds']['dense']:.2f} s. "
            + (f"Video ({run['video']['frames']} frames, {run['video']['keyframes']} keyframes): max |shared - dense| "
               f"{run['video']['max_abs_diff']:.2g}." if "video" in run else "") + "\n\n" + table(
                ["task", "metric", "single-task model", "bundle (shared engine)", "max abs(shared - dense)",
                 "dx density"], rows))
    replace_section("demo", "\n\n".join(parts))


if __name__ == "__main__":
    main()
