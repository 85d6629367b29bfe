"""The installed ``mtlcompress`` console script, as a user's shell runs it: usage errors
are click's short message and exit 2, never a traceback; ``--json`` failures are one
JSON object on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("mtlcompress")

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed in this interpreter")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=600)  # generous: shared CI machines stall


@pytest.mark.parametrize("args", [
    ("run", "--bogus"),                 # unknown option
    ("inspect", "b.safetensors", "--no-such-flag"),
    ("train", "--task", "depth"),       # missing required option
    ("run",),                           # missing arguments
])
def test_usage_error_is_short_and_exits_2(args):
    result = run_script(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage:" in result.stderr
    assert "Error:" in result.stderr


def test_usage_error_under_json_is_one_object():
    result = run_script("run", "--bogus", "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert error["error"] is True and error["code"] == "usage"
    assert "--bogus" in error["message"]


def test_known_failure_under_json_is_one_object(tmp_path):
    missing = tmp_path / "missing.safetensors"
    result = run_script("inspect", str(missing), "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert error == {"error": True, "code": "bundle", "message": error["message"]}
    assert str(missing) in error["message"]
    assert "Traceback" not in result.stderr


def test_known_failure_is_one_line_for_people(tmp_path):
    result = run_script("inspect", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_answers():
    result = run_script("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("mtlcompress ")
