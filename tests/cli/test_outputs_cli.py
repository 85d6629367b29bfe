"""No command writes over one of its own inputs, replaces an existing output without
``--overwrite``, or takes a folder (or the wrong kind of file) for its output: each is
one error line and exit 2, before any work, and the file on disk is untouched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mtlcompress.cli.main import main

PAYLOAD = b"precious input, not a real checkpoint: the check runs before anything is read"


def fail(monkeypatch, capsys, *args: object) -> str:
    """Run the real entry point; return its one error line (it must exit 2)."""
    monkeypatch.setattr(sys, "argv", ["mtlcompress", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured
    return captured.err


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {"base": tmp_path / "s.safetensors", "task": tmp_path / "d.safetensors",
             "bundle": tmp_path / "b.safetensors", "data": tmp_path / "data"}
    for name, path in paths.items():
        if name == "data":
            path.mkdir()
            (path / "manifest.json").write_text("{}")
        else:
            path.write_bytes(PAYLOAD)
    return paths


def untouched(*paths: Path) -> bool:
    return all(p.read_bytes() == PAYLOAD for p in paths)


# (command words, output flag, the input the output collides with), inputs given as file keys.
COMMANDS = {
    "export": (["export", "--base", "{base}", "--task", "{task}"], "--out", "base"),
    "export-task": (["export", "--base", "{base}", "--task", "{task}"], "--out", "task"),
    "inspect": (["inspect", "{bundle}"], "--html", "bundle"),
    "train": (["train", "--task", "depth", "--data", "{data}", "--init", "{base}"], "--out", "base"),
    "sparsify-weights": (["sparsify", "weights", "--base", "{base}", "--task", "{task}", "--data", "{data}"],
                         "--out", "task"),
    "sparsify-finetune": (["sparsify", "finetune", "--base", "{base}", "--task", "{task}", "--data", "{data}"],
                          "--out", "base"),
    "sparsify-activations": (["sparsify", "activations", "--base", "{base}", "--task", "{task}", "--data",
                              "{data}"], "--out", "task"),
    "sparsify-temporal": (["sparsify", "temporal", "--task", "{task}", "--data", "{data}"], "--out", "task"),
}


def command(name: str, files: dict[str, Path]) -> tuple[list[str], str, Path]:
    words, flag, clash = COMMANDS[name]
    return [w.format(**files) for w in words], flag, files[clash]


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_is_an_input_is_refused(name, overwrite, files, monkeypatch, capsys):
    words, flag, clash = command(name, files)
    err = fail(monkeypatch, capsys, *words, flag, clash, *(["--overwrite"] if overwrite else []))
    assert "is also an input" in err
    assert untouched(files["base"], files["task"], files["bundle"])


@pytest.mark.parametrize("name", ["export", "inspect", "train", "sparsify-weights"])
def test_a_link_to_an_input_is_refused(name, files, tmp_path, monkeypatch, capsys):
    words, flag, clash = command(name, files)
    link = tmp_path / ("link.html" if flag == "--html" else "link.safetensors")
    link.symlink_to(clash)
    err = fail(monkeypatch, capsys, *words, flag, link, "--overwrite")
    assert "is also an input" in err and untouched(clash)


@pytest.mark.parametrize("name", ["export", "inspect", "train", "sparsify-weights", "sparsify-temporal"])
def test_an_existing_output_needs_overwrite(name, files, tmp_path, monkeypatch, capsys):
    words, flag, _ = command(name, files)
    old = tmp_path / ("old.html" if flag == "--html" else "old.safetensors")
    old.write_bytes(PAYLOAD)
    err = fail(monkeypatch, capsys, *words, flag, old)
    assert "already exists; pass --overwrite" in err and untouched(old)


@pytest.mark.parametrize("name", ["export", "inspect", "train", "sparsify-weights"])
def test_a_folder_output_is_refused(name, files, tmp_path, monkeypatch, capsys):
    words, flag, _ = command(name, files)
    folder = tmp_path / ("out.html" if flag == "--html" else "out.safetensors")
    folder.mkdir()
    err = fail(monkeypatch, capsys, *words, flag, folder, "--overwrite")
    assert "is a folder; give a file path" in err


@pytest.mark.parametrize("name, out", [("export", "b.txt"), ("inspect", "report.safetensors"),
                                       ("train", "model.pt")])
def test_the_wrong_kind_of_file_is_refused(name, out, files, tmp_path, monkeypatch, capsys):
    words, flag, _ = command(name, files)
    err = fail(monkeypatch, capsys, *words, flag, tmp_path / out)
    assert "must end in" in err and not (tmp_path / out).exists()


def test_pretrain_refuses_an_existing_init_and_a_folder(files, tmp_path, monkeypatch, capsys):
    args = ["pretrain", "--data", files["data"], "--out"]
    assert "already exists" in fail(monkeypatch, capsys, *args, files["base"])
    assert untouched(files["base"])
    assert "is also an input" in fail(monkeypatch, capsys, *args, files["data"], "--overwrite")


def test_export_from_a_plan_never_writes_over_the_plan(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.safetensors"  # an odd name, but it is the plan
    plan.write_bytes(PAYLOAD)
    assert "is also an input" in fail(monkeypatch, capsys, "export", "--plan", plan, "--out", plan, "--overwrite")
    assert plan.read_bytes() == PAYLOAD


def test_a_plan_whose_stage_output_is_a_source_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sparse"
    out.mkdir()
    from mtlcompress.models.backbone import PRESETS
    from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint

    paths = {"semseg": tmp_path / "s.safetensors", "depth": out / "depth.weights.safetensors"}  # stage 1's output
    for task, path in paths.items():
        info = CheckpointInfo(task=task, backbone=PRESETS["micro"], out_channels=4 if task == "semseg" else 1,
                              num_classes=4 if task == "semseg" else None)
        save_checkpoint(build_model(info), info, path)
    before = paths["depth"].read_bytes()
    plan = tmp_path / "plan.toml"
    plan.write_text(f'data = "{tmp_path}"\nout = "{out}"\nbase = "semseg"\n'
                    f'[tasks]\nsemseg = "{paths["semseg"]}"\ndepth = "{paths["depth"]}"\n')
    err = fail(monkeypatch, capsys, "sparsify", "all", "--plan", plan)
    assert "is also an input" in err and paths["depth"].read_bytes() == before


def test_data_synth_refuses_a_file_and_a_dataset_folder(files, monkeypatch, capsys):
    assert "is a file; it must be a folder" in fail(monkeypatch, capsys, "data", "synth", "--out", files["base"],
                                                    "--images", "2")
    assert untouched(files["base"])
    assert "not empty; pass --overwrite" in fail(monkeypatch, capsys, "data", "synth", "--out", files["data"],
                                                 "--images", "2")
    assert json.loads((files["data"] / "manifest.json").read_text()) == {}


def test_demo_refuses_a_file_for_its_folder(files, monkeypatch, capsys):
    err = fail(monkeypatch, capsys, "demo", "--out", files["base"], "--preset", "quick")
    assert "is a file; it must be a folder" in err and untouched(files["base"])


def test_under_json_the_refusal_is_one_object(files, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "export", "--base", str(files["base"]), "--out",
                                      str(files["base"]), "--json"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    error = json.loads(capsys.readouterr().out)
    assert error["error"] is True and error["code"] == "output" and "is also an input" in error["message"]
    assert untouched(files["base"])
