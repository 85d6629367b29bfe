"""``mtlcompress export``: a bundle from checkpoints or a plan, honest sizes, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mtlcompress.bundle.format import load_bundle
from mtlcompress.cli.export import read_export_plan
from mtlcompress.cli.main import app, main
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint

MICRO = PRESETS["micro"]


def save(folder: Path, task: str, out_channels: int, backbone=MICRO, weights=None, **info) -> Path:
    info = CheckpointInfo(task=task, backbone=backbone, out_channels=out_channels, **info)
    model = build_model(info)
    if weights is not None:
        model.backbone.load_state_dict(weights)
    path = folder / f"{task}.safetensors"
    save_checkpoint(model, info, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """semseg (base), depth (1% sparse delta of the base), normals (independent) in ckpts/."""
    folder = tmp_path_factory.mktemp("export") / "ckpts"
    folder.mkdir()
    torch.manual_seed(0)
    base = save(folder, "semseg", 4, num_classes=4)
    weights = {k[len("backbone."):]: v for k, v in load_file(base).items() if k.startswith("backbone.")}
    sparse = {k: v + (torch.rand_like(v) < 0.01) * (torch.rand_like(v) + 0.1) for k, v in weights.items()}
    depth = save(folder, "depth", 1, weights=sparse)
    normals = save(folder, "normals", 3)
    return {"semseg": base, "depth": depth, "normals": normals}


def run_main(monkeypatch, capsys, *args: str) -> str:
    """Run the real entry point; return the error line it printed (exit code 2)."""
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "export", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_export_json_reports_sizes_that_match_the_files(checkpoints, tmp_path):
    out = tmp_path / "bundle.safetensors"
    result = CliRunner().invoke(app, ["export", "--base", str(checkpoints["semseg"]), "--task",
                                      str(checkpoints["depth"]), "--task", str(checkpoints["normals"]),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    totals = summary["totals"]
    sources = sum(p.stat().st_size for p in checkpoints.values())
    assert totals["bundle_bytes"] == out.stat().st_size
    assert totals["source_bytes"] == sources and totals["source_checkpoints"] == 3
    assert totals["one_checkpoint_bytes"] == checkpoints["semseg"].stat().st_size
    assert totals["ratio_vs_sources"] == pytest.approx(out.stat().st_size / sources)
    assert totals["ratio_vs_one_checkpoint"] == pytest.approx(out.stat().st_size / totals["one_checkpoint_bytes"])
    assert totals["ratio_vs_sources"] < 1  # the sparse sub-task costs far less than a checkpoint
    rows = {row["task"]: row for row in summary["tasks"]}
    assert [row["role"] for row in summary["tasks"]] == ["base", "sub-task", "sub-task"]
    assert rows["semseg"]["delta_bytes"] == 0 and rows["semseg"]["layouts"] == {}
    assert 0.005 < rows["depth"]["delta_density"] < 0.02 and rows["normals"]["delta_density"] > 0.9
    assert rows["depth"]["delta_bytes"] < rows["normals"]["delta_bytes"] / 10
    assert rows["normals"]["layouts"] == {"dense": sum(rows["normals"]["layouts"].values())}
    bundle = load_bundle(out)
    assert list(bundle.tasks) == ["semseg", "depth", "normals"]
    head_bytes = sum(h.numel() * h.element_size() for h in bundle.task("depth").head.values())
    assert rows["depth"]["head_bytes"] == head_bytes


def test_export_prints_a_table_for_people(checkpoints, tmp_path):
    out = tmp_path / "bundle.safetensors"
    result = CliRunner().invoke(app, ["export", "--base", str(checkpoints["semseg"]), "--task",
                                      str(checkpoints["depth"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "depth" in result.stdout and "source checkpoints" in result.stdout and "{" not in result.stdout


def _write_plan(checkpoints, text):
    root = checkpoints["semseg"].parent.parent
    (root / "data").mkdir(exist_ok=True)
    plan = root / "plan.toml"
    plan.write_text('data = "data"\nout = "sparse"\n' + text)
    return plan


def test_export_from_a_plan(checkpoints, tmp_path):
    plan = _write_plan(checkpoints, 'base = "depth"\n[tasks]\nsemseg = "ckpts/semseg.safetensors"\n'
                                    'depth = "ckpts/depth.safetensors"\n[weights]\nsteps = 10\n')
    out = tmp_path / "plan.safetensors"
    result = CliRunner().invoke(app, ["export", "--plan", str(plan), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.base_task == "depth" and list(bundle.tasks) == ["depth", "semseg"]
    assert json.loads(result.stdout)["totals"]["source_checkpoints"] == 2


def test_export_from_a_plan_takes_the_last_finished_stage(checkpoints, tmp_path):
    plan = _write_plan(checkpoints, 'base = "semseg"\n[tasks]\nsemseg = "ckpts/semseg.safetensors"\n'
                                    'depth = "ckpts/depth.safetensors"\n')
    finished = plan.parent / "sparse" / "depth.finetune.safetensors"
    finished.parent.mkdir()
    shutil.copy(checkpoints["depth"], finished)
    base, tasks = read_export_plan(plan)
    assert base == checkpoints["semseg"].resolve() and tasks == [finished.resolve()]


def test_two_checkpoints_for_one_task(checkpoints, tmp_path, monkeypatch, capsys):
    twin = tmp_path / "depth-again.safetensors"
    shutil.copy(checkpoints["depth"], twin)
    err = run_main(monkeypatch, capsys, "--base", checkpoints["semseg"], "--task", checkpoints["depth"],
                   "--task", twin, "--out", tmp_path / "b.safetensors")
    assert "a second checkpoint for task 'depth'" in err


def test_different_architectures(checkpoints, tmp_path, monkeypatch, capsys):
    other = save(tmp_path, "edges", 1, backbone=dataclasses.replace(MICRO, depth=3))
    err = run_main(monkeypatch, capsys, "--base", checkpoints["semseg"], "--task", other,
                   "--out", tmp_path / "b.safetensors")
    assert "all tasks must share one architecture" in err


def test_missing_checkpoint(checkpoints, tmp_path, monkeypatch, capsys):
    err = run_main(monkeypatch, capsys, "--base", checkpoints["semseg"], "--task", tmp_path / "nope.safetensors",
                   "--out", tmp_path / "b.safetensors")
    assert "nope.safetensors: file not found" in err
    assert not (tmp_path / "b.safetensors").exists()


def test_base_is_required_without_a_plan(tmp_path, monkeypatch, capsys):
    assert "--base is required" in run_main(monkeypatch, capsys, "--out", tmp_path / "b.safetensors")


@pytest.mark.parametrize(("plan", "problem"), [
    ('base = "edges"\n[tasks]\nsemseg = "ckpts/semseg.safetensors"\ndepth = "ckpts/depth.safetensors"\n',
     "base 'edges' is not among the tasks"),
    ('base = "semseg"\nbsae = 1\n[tasks]\nsemseg = "ckpts/semseg.safetensors"\n', "unknown key"),
    ('base = "semseg"\n[tasks]\nsemseg = "ckpts/missing.safetensors"\ndepth = "ckpts/depth.safetensors"\n',
     "checkpoint for 'semseg' not found"),
    ('base = "semseg"\n[tasks]\nsemseg = "ckpts/depth.safetensors"\ndepth = "ckpts/depth.safetensors"\n',
     "is a 'depth' checkpoint"),
    ('base = "semseg"\n[tasks\n', "not valid TOML"),
])
def test_bad_plans(checkpoints, tmp_path, monkeypatch, capsys, plan, problem):
    path = _write_plan(checkpoints, plan)
    err = run_main(monkeypatch, capsys, "--plan", path, "--out", tmp_path / "b.safetensors")
    assert problem in err and "plan.toml" in err


def test_plan_and_checkpoints_are_exclusive(checkpoints, tmp_path, monkeypatch, capsys):
    err = run_main(monkeypatch, capsys, "--plan", tmp_path / "p.toml", "--base", checkpoints["semseg"],
                   "--out", tmp_path / "b.safetensors")
    assert "either --plan or --base/--task" in err
