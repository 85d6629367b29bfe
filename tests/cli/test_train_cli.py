import json
import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file
from typer.testing import CliRunner

from mtlcompress.cli.main import app

runner = CliRunner()


def _train_args(quick_demo, out, steps=6):
    return ["train", "--task", "depth", "--data", str(quick_demo["data"]), "--init", str(quick_demo["init"]),
            "--out", str(out), "--steps", str(steps), "--batch-size", "8", "--eval-every", "3", "--quiet"]


def test_train_then_evaluate(quick_demo, tmp_path):
    out = tmp_path / "depth.safetensors"
    result = runner.invoke(app, _train_args(quick_demo, out) + ["--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["task"] == "depth" and trained["metrics"]["rmse"] > 0
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(quick_demo["data"]), "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert abs(evaluated["metrics"]["rmse"] - trained["metrics"]["rmse"]) < 1e-6
    assert evaluated["images"] == 8
    assert evaluated["protocol"].startswith("RMSE") and "native resolution" in evaluated["protocol"]


def test_existing_output_is_not_overwritten(quick_demo, tmp_path):
    out = tmp_path / "depth.safetensors"
    out.write_bytes(b"precious")
    result = runner.invoke(app, _train_args(quick_demo, out))
    assert result.exit_code != 0
    assert out.read_bytes() == b"precious"


def _run_cli(args):
    return subprocess.Popen([sys.executable, "-m", "mtlcompress.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_kill_dash_nine_then_resume_gives_the_same_weights(quick_demo, tmp_path):
    steps = 24
    reference = tmp_path / "reference.safetensors"
    assert _run_cli(_train_args(quick_demo, reference, steps) + ["--checkpoint-every", "2"]).wait() == 0

    out = tmp_path / "killed.safetensors"
    state = tmp_path / "killed.resume.safetensors"
    process = _run_cli(_train_args(quick_demo, out, steps) + ["--checkpoint-every", "2"])
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be killed; raise the step count"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not out.exists()

    assert _run_cli(_train_args(quick_demo, out, steps) + ["--checkpoint-every", "2"]).wait() == 0
    assert not state.exists()
    expected, resumed = load_file(str(reference)), load_file(str(out))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert (expected[name] == resumed[name]).all(), name
