"""Run a plan: the base's temporal stage (if asked) first, then every stage for every
sub-task in order, skipping stages whose output already exists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlcompress.sparsify.base_selection import choose_base
from mtlcompress.sparsify.common import StageResult, result_from_checkpoint
from mtlcompress.sparsify.plan import Plan
from mtlcompress.sparsify.stage_activations import sparsify_activations
from mtlcompress.sparsify.stage_finetune import finetune_deltas
from mtlcompress.sparsify.stage_temporal import sparsify_temporal
from mtlcompress.sparsify.stage_weights import sparsify_weights

STAGE_FUNCTIONS: dict[str, Callable[..., StageResult]] = {
    "weights": sparsify_weights,
    "finetune": finetune_deltas,
    "activations": sparsify_activations,
    "temporal": sparsify_temporal,
}


@dataclass
class PlanResult:
    """What ``run_plan`` did: the base task (and why), each stage's result, and the
    final checkpoint of every task."""

    base: str
    base_reason: str
    results: list[StageResult]
    final: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``sparsify all --json`` prints)."""
        return {"base": self.base, "base_reason": self.base_reason, "stages": [r.to_dict() for r in self.results],
                "final_checkpoints": {task: str(path) for task, path in self.final.items()}}


def resolve_base(plan: Plan) -> tuple[str, str]:
    """(base task, why it was chosen)."""
    if plan.base != "auto":
        return plan.base, "named in the plan"
    base, totals = choose_base(plan.tasks)
    ranking = ", ".join(f"{task} {total:.3f}" for task, total in sorted(totals.items(), key=lambda kv: kv[1]))
    return base, f"closest backbone to the other tasks (summed relative L2 distance: {ranking})"


def run_plan(plan: Plan, *, show_progress: bool = True, log: Callable[[str], None] = lambda _: None,
             training: dict[str, Any] | None = None) -> PlanResult:
    """Run every stage of ``plan`` for every sub-task against the base (``sparsify all``).

    A stage whose output already exists is skipped, so re-running after an
    interruption continues where it stopped.

    Args:
        plan: from ``load_plan``.
        show_progress: draw progress bars while training.
        log: called with one line per step (base choice, each stage started or skipped).
        training: training settings for every stage (``device``, ``precision``,
            ``workers``, ...) that a stage table of the plan does not set itself.

    Returns:
        The base, why it was chosen, every stage's result and the final checkpoints
        (pass them to ``export_bundle``).
    """
    base, reason = resolve_base(plan)
    log(f"base task: {base} ({reason})")
    plan.out.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []

    def run_stage(stage: str, name: str, **inputs: Any) -> Path:
        out = plan.stage_output(name, stage)
        if out.exists():
            log(f"{name}: {stage} already done ({out})")
            results.append(result_from_checkpoint(out))
            return out
        log(f"{name}: {stage} -> {out}")
        results.append(STAGE_FUNCTIONS[stage](data=plan.data, out=out, supervision=plan.supervision,
                                              config=plan.train_config(stage, **(training or {})), show_progress=show_progress,
                                              **plan.stage_kwargs(stage), **inputs))
        return out

    base_checkpoint = plan.tasks[base]
    if "temporal" in plan.stages:
        base_checkpoint = run_stage("temporal", base, task=base_checkpoint)
    for task, current in plan.tasks.items():
        if task == base:
            continue
        for stage in plan.stages:
            current = run_stage(stage, task, base=base_checkpoint, task=current)
    return PlanResult(base, reason, results, plan.final_checkpoints(base))
