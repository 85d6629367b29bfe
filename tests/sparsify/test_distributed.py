"""Sparsify stages under ``torchrun`` (two gloo ranks on the CPU): every rank calibrates
and evaluates, rank 0 alone writes, and the next stage of the plan reads that output on
every rank, with no rank left waiting."""

import os
import subprocess
import sys
from pathlib import Path

from mtlcompress.models.checkpoint import read_checkpoint_info
from mtlcompress.models.taps import shared_linear_names

WORKER = Path(__file__).parents[1] / "training" / "_ddp_worker.py"


def test_two_gloo_ranks_run_a_plan_whose_second_stage_reads_the_first(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    plan = tmp_path / "plan.toml"
    plan.write_text("\n".join([
        f'data = "{quick_demo["data"]}"', f'out = "{tmp_path / "sparse"}"', 'base = "semseg"',
        'stages = ["weights", "activations"]', "[tasks]", f'semseg = "{ckpts["semseg"]}"',
        f'depth = "{ckpts["depth"]}"', "[weights]", 'method = "magnitude"', "[activations]", "steps = 2",
        "batch_size = 4", "calibration_images = 8", "tolerance = 0.05"]) + "\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(tmp_path), "sparsify", "all", "--plan", str(plan), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    info = read_checkpoint_info(tmp_path / "sparse" / "depth.activations.safetensors")
    assert set(info.sparsity["activation"]["task_thresholds"]) == set(shared_linear_names(info.backbone.depth))
    assert not list((tmp_path / "sparse").glob("*.resume.safetensors"))
