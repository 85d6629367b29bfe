"""``run_plan``: stage order, the base's temporal stage first, plan options reaching the stages."""

import json

from mtlcompress.models.checkpoint import read_checkpoint_info
from mtlcompress.sparsify.pipeline import resolve_base, run_plan
from mtlcompress.sparsify.plan import parse_plan

TINY = {"steps": 1, "batch_size": 4, "warmup_steps": 1}


def _plan(quick_demo, tmp_path, **overrides):
    ckpts = quick_demo["checkpoints"]
    raw = {"data": str(quick_demo["data"]), "out": "sparse", "base": "semseg",
           "tasks": {"semseg": str(ckpts["semseg"]), "depth": str(ckpts["depth"]), "edges": str(ckpts["edges"])}}
    return parse_plan({**raw, **overrides}, tmp_path)


def test_a_named_base_is_used_as_is(quick_demo, tmp_path):
    assert resolve_base(_plan(quick_demo, tmp_path, base="depth")) == ("depth", "named in the plan")


def test_plan_options_reach_every_stage_and_the_log_says_what_ran(quick_demo, tmp_path):
    plan = _plan(quick_demo, tmp_path, stages=["weights", "finetune"],
                 weights={"method": "magnitude", "density": 0.05, **TINY}, finetune={**TINY, "lr": 2e-4})
    lines = []
    result = run_plan(plan, show_progress=False, log=lines.append)
    assert [(r.task, r.stage) for r in result.results] == [("depth", "weights"), ("depth", "finetune"),
                                                         ("edges", "weights"), ("edges", "finetune")]
    assert all(r.extra["target_density"] == 0.05 for r in result.results if r.stage == "weights")
    finetuned = read_checkpoint_info(plan.stage_output("edges", "finetune"))
    assert finetuned.training["config"]["lr"] == 2e-4 and finetuned.training["config"]["steps"] == 1
    assert finetuned.training["config"]["warmup_steps"] == 1
    assert lines[0].startswith("base task: semseg (named in the plan)")
    assert f"depth: finetune -> {plan.stage_output('depth', 'finetune')}" in lines
    assert result.final == {"semseg": plan.tasks["semseg"], "depth": plan.stage_output("depth", "finetune"),
                            "edges": plan.stage_output("edges", "finetune")}
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["base"] == "semseg" and len(summary["stages"]) == 4

    lines.clear()
    run_plan(plan, show_progress=False, log=lines.append)
    assert sum("already done" in line for line in lines) == 4


def test_the_base_temporal_stage_runs_first_and_becomes_the_new_base(quick_demo, tmp_path):
    plan = _plan(quick_demo, tmp_path, stages=["weights", "temporal"], tasks={
        "semseg": str(quick_demo["checkpoints"]["semseg"]), "depth": str(quick_demo["checkpoints"]["depth"])},
        weights={"method": "magnitude"}, temporal={**TINY, "tolerance": 0.5})
    result = run_plan(plan, show_progress=False)
    assert [(r.task, r.stage) for r in result.results] == [("semseg", "temporal"), ("depth", "weights"),
                                                         ("depth", "temporal")]
    new_base = plan.stage_output("semseg", "temporal")
    weights = read_checkpoint_info(plan.stage_output("depth", "weights"))
    assert weights.sparsity["base"]["path"] == str(new_base)
    assert read_checkpoint_info(plan.stage_output("depth", "temporal")).training["base"] == str(new_base)
    assert result.final["semseg"] == new_base
