"""``mtlcompress sparsify`` through the command line: a stage, a plan, and one-line refusals."""

import json
import sys

import pytest
from typer.testing import CliRunner

from mtlcompress.cli.main import app, main
from mtlcompress.models.checkpoint import read_checkpoint_info
from mtlcompress.sparsify.config import STAGE_CONFIGS

runner = CliRunner()


def _stage_args(quick_demo, out):
    ckpts = quick_demo["checkpoints"]
    return ["sparsify", "weights", "--base", str(ckpts["semseg"]), "--task", str(ckpts["depth"]),
            "--data", str(quick_demo["data"]), "--out", str(out)]


def _exit_of_main(monkeypatch, capsys, args):
    """Run the console entry point as a user would: exit code and what it printed."""
    monkeypatch.setattr(sys, "argv", ["mtlcompress", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


def _plan_file(quick_demo, tmp_path, weights):
    ckpts = quick_demo["checkpoints"]
    lines = [f'data = "{quick_demo["data"]}"', 'out = "sparse"', 'base = "semseg"', 'stages = ["weights"]', "",
             "[tasks]", f'semseg = "{ckpts["semseg"]}"', f'depth = "{ckpts["depth"]}"', "", "[weights]", *weights]
    path = tmp_path / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_stage_runs_with_the_documented_defaults(quick_demo, tmp_path):
    out = tmp_path / "depth.weights.safetensors"
    result = runner.invoke(app, [*_stage_args(quick_demo, out), "--method", "magnitude", "--json"])
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["stages"][0]
    assert stage["stage"] == "weights" and stage["target_density"] == 0.02
    assert read_checkpoint_info(out).sparsity["method"] == "magnitude"


def test_sparsify_all_runs_a_plan_without_density(quick_demo, tmp_path):
    plan = _plan_file(quick_demo, tmp_path, ['method = "magnitude"'])
    result = runner.invoke(app, ["sparsify", "all", "--plan", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["base"] == "semseg" and summary["stages"][0]["target_density"] == 0.02
    assert (tmp_path / "sparse" / "depth.weights.safetensors").is_file()


@pytest.mark.parametrize(("weights", "message"), [
    (["steps = -5"], r"\[weights\] steps must be in [0, inf), got -5"),
    (["lr = nan"], r"\[weights\] lr must be a finite number, got nan"),
    (["checkpoint_every = 0"], r"\[weights\] checkpoint_every must be in [1, inf), got 0"),
    (["temperature = 3"], r"\[weights\] has unknown option 'temperature'"),
    (['density = "lots"'], r"\[weights\] density must be of type float"),
])
def test_a_bad_plan_is_one_line_and_exit_2(quick_demo, tmp_path, monkeypatch, capsys, weights, message):
    plan = _plan_file(quick_demo, tmp_path, weights)
    code, printed = _exit_of_main(monkeypatch, capsys, ["sparsify", "all", "--plan", str(plan)])
    assert code == 2
    assert message.replace("\\", "") in printed and "Traceback" not in printed
    assert len(printed.strip().splitlines()) == 1
    assert not (tmp_path / "sparse").exists()


def test_an_option_outside_its_open_range_is_one_line_and_exit_2(quick_demo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.safetensors"
    code, printed = _exit_of_main(monkeypatch, capsys, [*_stage_args(quick_demo, out), "--density", "0"])
    assert code == 2 and "--density must be in (0, 1], got 0.0" in printed
    assert len(printed.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_help_explains_every_stage_option(stage):
    result = runner.invoke(app, ["sparsify", stage, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    config = STAGE_CONFIGS[stage]
    assert config.__doc__.splitlines()[0] in result.output
    for spec in config.option_specs():
        assert spec.flag in result.output
        assert spec.help.split()[0] in result.output
