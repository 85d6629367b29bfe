"""``mtlcompress demo`` end to end through the CLI (quick preset: ~20 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_quick_demo_json_reports_the_bundle_and_the_run(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "mtlcompress.cli.main", "demo", "--preset", "quick", "--out",
                           str(out), "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    tasks = [row["task"] for row in report["bundle"]["tasks"]]
    assert len(tasks) >= 2 and report["bundle"]["base_task"] in tasks
    assert set(report["run"]["metrics"]) == set(tasks) == set(report["single_task"])
    assert all(diff <= 1e-3 for diff in report["run"]["max_abs_diff"].values())
    assert report["run"]["speed"]["speedup"]["images"]["vs_models"] > 0  # against the T single-task models
    assert (out / "demo-report.json").is_file() and Path(report["bundle"]["bundle"]).is_file()
