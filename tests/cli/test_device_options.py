"""Every command that runs a model takes the same --device and --precision, and a device
this machine lacks (or an unknown name) is one line and exit code 2, before any work."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from mtlcompress.cli.main import app, main

runner = CliRunner()
MODEL_COMMANDS = [["pretrain"], ["train"], ["evaluate"], ["sparsify", "weights"], ["sparsify", "finetune"],
                  ["sparsify", "activations"], ["sparsify", "temporal"], ["sparsify", "all"], ["inspect"]]


def _arguments(command, quick_demo, tmp_path):
    data, ckpts, out = str(quick_demo["data"]), quick_demo["checkpoints"], str(tmp_path / "out.safetensors")
    if command == ["pretrain"]:
        return ["--data", data, "--out", out]
    if command == ["train"]:
        return ["--task", "depth", "--data", data, "--out", out]
    if command == ["evaluate"]:
        return [str(ckpts["depth"]), "--data", data]
    if command == ["inspect"]:
        return [str(tmp_path / "bundle.safetensors"), "--data", data]
    if command == ["sparsify", "all"]:
        return ["--plan", str(tmp_path / "plan.toml")]
    return ["--base", str(ckpts["semseg"]), "--task", str(ckpts["depth"]), "--data", data, "--out", out]


def _exit_of_main(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["mtlcompress", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_help_offers_device_and_precision(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "--device" in result.output and "cuda:N" in result.output
    assert command == ["inspect"] or "--precision" in result.output  # inspect runs the bundle as stored


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_cuda_without_a_gpu_is_one_json_error_and_exit_2(command, quick_demo, tmp_path, monkeypatch, capsys):
    args = [*command, *_arguments(command, quick_demo, tmp_path), "--device", "cuda", "--json"]
    code, out, _ = _exit_of_main(monkeypatch, capsys, args)
    assert code == 2
    error = json.loads(out)
    assert error["error"] is True and "no CUDA GPU" in error["message"]
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(("option", "value", "message"), [("--device", "gpu", "unknown device 'gpu'"),
                                                          ("--precision", "fp8", "fp8")])
@pytest.mark.parametrize("command", [["train"], ["evaluate"], ["sparsify", "finetune"]], ids=" ".join)
def test_unknown_device_or_precision_is_one_line(command, option, value, message, quick_demo, tmp_path,
                                                 monkeypatch, capsys):
    code, out, err = _exit_of_main(monkeypatch, capsys,
                                   [*command, *_arguments(command, quick_demo, tmp_path), option, value])
    assert code == 2 and message in out + err and "Traceback" not in out + err


def test_train_with_bf16_accumulation_and_workers(quick_demo, tmp_path):
    out = tmp_path / "depth.safetensors"
    result = runner.invoke(app, ["train", "--task", "depth", "--data", str(quick_demo["data"]), "--init",
                                 str(quick_demo["init"]), "--out", str(out), "--steps", "2", "--batch-size", "8",
                                 "--device", "cpu", "--precision", "bf16", "--accumulate", "2", "--workers", "1",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["rmse"] > 0
    from mtlcompress.models.checkpoint import read_checkpoint_info
    from safetensors.torch import load_file

    training = read_checkpoint_info(out).training["config"]
    assert (training["precision"], training["accumulate"], training["workers"]) == ("bf16", 2, 1)
    assert all(t.dtype == torch.float32 for t in load_file(str(out)).values() if t.is_floating_point())
