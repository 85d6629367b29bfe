"""Training on a CUDA GPU: run on the lent device machine (skipped without CUDA).

    PYTHONPATH=$PWD python -m pytest tests/gpu -q

Covers what the CPU tests cannot: the model, batches and optimizer state really live on
the GPU, bf16 and fp16 autocast there, state written on the GPU resumes on the CPU, and
``LOCAL_RANK`` picks the GPU, the sparsify stages calibrate thresholds and evaluate on the
GPU they trained on (in fp32), and (with two GPUs) two ``torchrun`` ranks train with NCCL.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mtlcompress.sparsify.common as sparsify_common
import mtlcompress.sparsify.stage_activations as stage_activations
import mtlcompress.sparsify.stage_temporal as stage_temporal
from mtlcompress.models.checkpoint import load_checkpoint, read_checkpoint_info
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.sparsify.stage_weights import sparsify_weights
from mtlcompress.training.distributed import training_device
from mtlcompress.training.loop import TrainConfig, run_training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
WORKER = Path(__file__).parents[1] / "training" / "_ddp_worker.py"


def _train(dataset, state, *, device, precision="fp32", steps=6, before_step=None, devices=None, workers=0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)

    def compute_loss(batch, step):
        if devices is not None:
            devices.append((batch["image"].device.type, model(batch["image"]).dtype))
        loss = ((model(batch["image"]).float().squeeze(1) - batch["target"]) ** 2).mean()
        return loss, {"loss": loss.item()}

    config = TrainConfig(steps=steps, batch_size=8, warmup_steps=1, checkpoint_every=2, eval_every=10**9,
                         device=device, precision=precision, workers=workers)
    run_training(model=model, optimizer=optimizer, compute_loss=compute_loss, dataset=dataset, config=config,
                 state_path=state, run_id={"test": 1, "config": config.to_dict()}, show_progress=False,
                 before_step=before_step)
    return model


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                                  ("fp16", torch.float16)])
def test_training_runs_on_the_gpu(points, tmp_path, precision, dtype):
    seen = []
    model = _train(points, tmp_path / "s.safetensors", device="cuda", precision=precision, devices=seen, workers=2)
    assert set(seen) == {("cuda", dtype)}
    assert all(p.is_cuda and p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_state_written_on_the_gpu_resumes_on_the_cpu(points, tmp_path):
    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    state = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(points, state, device="cuda", before_step=crash)
    resumed = _train(points, state, device="cpu")
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in resumed.parameters())


def test_auto_and_local_rank_pick_the_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count() - 1))
    assert training_device("auto") == torch.device("cuda", torch.cuda.device_count() - 1)


def test_sparsify_stages_calibrate_and_evaluate_on_the_gpu_in_fp32(quick_demo, tmp_path, monkeypatch):
    seen = []  # (what, device of its inputs, dtype of its outputs) for every forward pass

    def spy(what, function):
        def run(model, *args, **kwargs):
            hook = model.register_forward_hook(
                lambda module, inputs, output: seen.append((what, inputs[0].device.type, output.dtype)))
            try:
                return function(model, *args, **kwargs)
            finally:
                hook.remove()
        return run

    monkeypatch.setattr(stage_activations, "calibrate_task_thresholds",
                        spy("task thresholds", stage_activations.calibrate_task_thresholds))
    monkeypatch.setattr(stage_temporal, "calibrate_temporal_thresholds",
                        spy("temporal thresholds", stage_temporal.calibrate_temporal_thresholds))
    monkeypatch.setattr(sparsify_common, "evaluate_model", spy("evaluation", sparsify_common.evaluate_model))
    ckpts, data = quick_demo["checkpoints"], quick_demo["data"]
    # Trained in bf16: calibration and evaluation must still run in fp32.
    config = TrainConfig(steps=3, batch_size=4, warmup_steps=1, eval_every=10**9, checkpoint_every=2,
                         device="cuda", precision="bf16")
    weights = tmp_path / "depth.weights.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=data, out=weights, density=0.05,
                     method="magnitude", config=config, show_progress=False)
    activations = stage_activations.sparsify_activations(
        base=ckpts["semseg"], task=weights, data=data, out=tmp_path / "depth.activations.safetensors",
        config=config, tolerance=0.05, show_progress=False)
    stage_temporal.sparsify_temporal(task=ckpts["semseg"], data=data, out=tmp_path / "semseg.temporal.safetensors",
                                     config=config, tolerance=0.05, show_progress=False)
    assert {what for what, _, _ in seen} == {"task thresholds", "temporal thresholds", "evaluation"}
    assert {(device, dtype) for _, device, dtype in seen} == {("cuda", torch.float32)}
    assert activations.metrics and all(type(v) is float for v in activations.metrics.values())
    for name, kind in (("depth.activations", "task_thresholds"), ("semseg.temporal", "temporal_thresholds")):
        out = tmp_path / f"{name}.safetensors"
        info = read_checkpoint_info(out)
        thresholds = info.sparsity["activation"][kind]
        assert set(thresholds) == set(shared_linear_names(info.backbone.depth))
        assert all(type(v) is float and math.isfinite(v) for v in thresholds.values())
        model, _ = load_checkpoint(out)  # written from the GPU, read on the CPU
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank")
def test_two_nccl_ranks_with_accumulation_end_with_identical_weights(quick_demo, tmp_path):
    out = tmp_path / "depth.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(tmp_path), "train", "--task", "depth", "--data", str(quick_demo["data"]), "--init",
               str(quick_demo["init"]), "--out", str(out), "--steps", "4", "--batch-size", "8", "--accumulate", "2",
               "--precision", "bf16", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    assert out.is_file()
