import pytest

from mtlcompress.errors import PlanError
from mtlcompress.sparsify.pipeline import resolve_base, run_plan
from mtlcompress.sparsify.plan import load_plan, parse_plan


def _plan(quick_demo, **overrides):
    ckpts = quick_demo["checkpoints"]
    raw = {"data": str(quick_demo["data"]), "out": "sparse", "base": "semseg",
           "tasks": {"semseg": str(ckpts["semseg"]), "depth": str(ckpts["depth"])}}
    raw.update(overrides)
    return raw


def test_a_valid_plan_parses(quick_demo, tmp_path):
    plan = parse_plan(_plan(quick_demo, weights={"density": 1, "steps": 3}), tmp_path)
    assert plan.base == "semseg" and set(plan.tasks) == {"semseg", "depth"}
    assert plan.stage_kwargs("weights") == {"density": 1.0}
    assert plan.train_config("weights").steps == 3
    assert plan.stage_output("depth", "finetune") == tmp_path / "sparse" / "depth.finetune.safetensors"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"colour": "blue"}, "unknown key"),
    ({"base": "parts"}, "base 'parts' is not among the tasks"),
    ({"tasks": {"semseg": "nope.safetensors", "depth": "x"}}, "checkpoint for 'semseg' not found"),
    ({"tasks": {"semseg": "a"}}, "at least two"),
    ({"tasks": {"telepathy": "a", "depth": "b"}}, "unknown task 'telepathy'"),
    ({"stages": ["finetune", "weights"]}, "keep the order"),
    ({"stages": ["activations"]}, "need the weights stage"),
    ({"stages": ["pruning"]}, "stages must be"),
    ({"weights": {"density": "lots"}}, "density must be of type float"),
    ({"weights": {"temperature": 3}}, "unknown option 'temperature'"),
    ({"data": "/does/not/exist"}, "data folder not found"),
    ({"seed": True}, "seed must be an integer"),
])
def test_plan_errors_are_one_clear_line(quick_demo, tmp_path, overrides, message):
    with pytest.raises(PlanError, match=message) as error:
        parse_plan(_plan(quick_demo, **overrides), tmp_path)
    assert "\n" not in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("data = [unclosed")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(bad)


def test_auto_base_explains_its_choice(quick_demo, tmp_path):
    plan = parse_plan(_plan(quick_demo, base="auto"), tmp_path)
    base, reason = resolve_base(plan)
    assert base in plan.tasks and "closest backbone" in reason


def test_run_plan_skips_finished_stages(quick_demo, tmp_path):
    fast = {"steps": 2, "batch_size": 8}
    plan = parse_plan(_plan(quick_demo, stages=["weights", "finetune"], weights={"density": 0.05, **fast},
                            finetune=fast), tmp_path)
    first = run_plan(plan, show_progress=False)
    assert [r.stage for r in first.results] == ["weights", "finetune"]
    assert first.final["depth"] == plan.stage_output("depth", "finetune")
    mtime = first.final["depth"].stat().st_mtime_ns
    again = run_plan(plan, show_progress=False)
    assert all(r.extra.get("skipped") for r in again.results)
    assert first.final["depth"].stat().st_mtime_ns == mtime
