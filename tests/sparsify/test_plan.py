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


@pytest.mark.parametrize(("overrides", "message"), [
    # issue #21 item 7: each of these was accepted (or crashed later) before plan values had ranges.
    ({"weights": {"checkpoint_every": 0}}, r"\[weights\] checkpoint_every must be in \[1, inf\), got 0"),
    ({"finetune": {"steps": -5}}, r"\[finetune\] steps must be in \[0, inf\), got -5"),
    ({"weights": {"lr": float("nan")}}, r"\[weights\] lr must be a finite number"),
    ({"activations": {"token_density": 2.5}}, r"\[activations\] token_density must be in \[0, 1\], got 2.5"),
    ({"activations": {"tolerance": -1}}, r"\[activations\] tolerance must be in \[0, inf\), got -1"),
    ({"out": 5}, "out must be a string, got 5"),
    ({"weights": {"density": 0}}, r"\[weights\] density must be in \(0, 1\]"),
    ({"weights": {"method": "lottery"}}, r"\[weights\] method must be one of l0, magnitude"),
    ({"temporal": {"granularity": "pixel"}}, r"\[temporal\] granularity must be one of"),
    ({"temporal": {"max_offset": 0}}, r"\[temporal\] max_offset must be in \[1, inf\)"),
    ({"finetune": {"batch_size": 0}}, r"\[finetune\] batch_size must be in \[1, inf\)"),
    ({"supervision": "telepathy"}, "supervision must be one of"),
    ({"finetune": {"steps": 2.5}}, r"\[finetune\] steps must be of type int"),
])
def test_out_of_range_plan_values_are_refused_before_any_work(quick_demo, tmp_path, overrides, message):
    with pytest.raises(PlanError, match=message) as error:
        parse_plan(_plan(quick_demo, **overrides), tmp_path)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "sparse").exists()


def test_a_plan_without_density_uses_the_documented_default(quick_demo, tmp_path):
    plan = parse_plan(_plan(quick_demo, stages=["weights"], weights={"method": "magnitude"}), tmp_path)
    result = run_plan(plan, show_progress=False)
    assert [r.stage for r in result.results] == ["weights"]
    assert result.results[0].extra["target_density"] == 0.02
    assert result.results[0].delta_density == pytest.approx(0.02, abs=0.005)


def test_plan_training_keys_override_the_stage_defaults(quick_demo, tmp_path):
    plan = parse_plan(_plan(quick_demo, seed=7, finetune={"warmup_steps": 3, "lr": 1}), tmp_path)
    config = plan.train_config("finetune")
    assert (config.warmup_steps, config.lr, config.seed, config.steps) == (3, 1.0, 7, 200)
    assert plan.train_config("weights").warmup_steps == 10 and plan.train_config("weights").steps == 300
