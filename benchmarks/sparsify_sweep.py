"""Stage 1 + 2 at several target densities, and labels vs label-free distillation.

    python benchmarks/sparsify_sweep.py demo-out [--tasks edges,depth] [--densities 0.01,0.02,0.05]

Uses the demo's data and single-task checkpoints (run `mtlcompress demo` first) and the
demo plan's stage settings; writes stage outputs to demo-out/sweep/ (skipping ones that
exist) and rewrites the sparsify-sweep section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _markdown import replace_section, table

from mtlcompress.sparsify.common import result_from_checkpoint
from mtlcompress.sparsify.plan import load_plan
from mtlcompress.sparsify.stage_finetune import finetune_deltas
from mtlcompress.sparsify.stage_weights import sparsify_weights


def run(plan, base: Path, task: str, density: float, supervision: str, out: Path):
    stage1 = out / f"{task}.{density}.{supervision}.weights.safetensors"
    stage2 = out / f"{task}.{density}.{supervision}.finetune.safetensors"
    if not stage1.exists():
        sparsify_weights(base=base, task=plan.tasks[task], data=plan.data, out=stage1, density=density,
                         supervision=supervision, config=plan.train_config("weights"), show_progress=False)
    if not stage2.exists():
        finetune_deltas(base=base, task=stage1, data=plan.data, out=stage2, supervision=supervision,
                        config=plan.train_config("finetune"), show_progress=False)
    return result_from_checkpoint(stage1), result_from_checkpoint(stage2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("demo_out", type=Path)
    parser.add_argument("--tasks", default="edges")
    parser.add_argument("--densities", default="0.01,0.02,0.05")
    args = parser.parse_args()
    plan = load_plan(args.demo_out / "plan.toml")
    base = plan.tasks[plan.base]
    out = args.demo_out / "sweep"
    out.mkdir(exist_ok=True)
    density_rows, supervision_rows = [], []
    for task in args.tasks.split(","):
        for density in (float(d) for d in args.densities.split(",")):
            weights, finetuned = run(plan, base, task, density, "labels", out)
            key = finetuned.primary
            density_rows.append([task, f"{100 * density:g}%", f"{100 * weights.delta_density:.3f}%",
                                 f"{100 * weights.extra.get('expected_density', float('nan')):.2f}%",
                                 key, finetuned.original_metrics.get(key), weights.metrics.get(key),
                                 finetuned.metrics.get(key), f"{100 * finetuned.relative_change:+.2f}%"])
        for supervision in ("labels", "distill"):
            _, finetuned = run(plan, base, task, 0.02, supervision, out)
            key = finetuned.primary
            supervision_rows.append([task, supervision, key, finetuned.original_metrics.get(key),
                                     finetuned.metrics.get(key), f"{100 * finetuned.relative_change:+.2f}%"])
    body = (f"Command: `python benchmarks/sparsify_sweep.py {args.demo_out} --tasks {args.tasks} "
            f"--densities {args.densities}` (stage settings from `{args.demo_out}/plan.toml`; base "
            f"`{plan.base}`). `expected` is the gates' own expected density before the final snap to the "
            "exact target.\n\n### Density on target\n\n"
            + table(["task", "target", "measured dW density", "expected (gates)", "metric", "original",
                     "after stage 1", "after stage 2", "change"], density_rows)
            + "\n\n### Labels vs label-free distillation (2% density, after stage 2)\n\n"
            + table(["task", "supervision", "metric", "original", "after stage 2", "change"], supervision_rows))
    replace_section("sparsify-sweep", body)


if __name__ == "__main__":
    main()
