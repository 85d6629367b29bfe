import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("_ddp_worker.py")


def test_two_gloo_ranks_with_accumulation_end_with_identical_weights(quick_demo, tmp_path):
    # Two micro-batches per step: DDP skips the all-reduce on the first (no_sync) and
    # averages the summed gradients on the second; a rank that missed it would drift.
    out = tmp_path / "depth.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(tmp_path), "train", "--task", "depth", "--data", str(quick_demo["data"]), "--init",
               str(quick_demo["init"]), "--out", str(out), "--steps", "4", "--batch-size", "8", "--accumulate", "2",
               "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # Rank 0 wrote the checkpoint, and it holds the trained (not the initial) weights.
    saved = load_file(str(out))
    assert torch.equal(saved["head.proj.weight"], ranks[0]["head.proj.weight"])
