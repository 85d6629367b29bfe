"""The loop's device, precision, accumulation and worker settings: gradient
accumulation equals one big batch, bf16/fp16 autocast really runs (and keeps fp32
weights), workers change nothing, and a resume may change device and workers."""

import pytest
import torch

from mtlcompress.errors import CheckpointError, MtlCompressError
from mtlcompress.io.container import read_container_header
from mtlcompress.training.loop import TrainConfig, run_training
from mtlcompress.training.precision import autocast, grad_scaler


def _train(dataset, state, *, steps=6, sgd=False, before_step=None, seen=None, loss_factor=1.0, **settings):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05) if sgd
                 else torch.optim.AdamW(model.parameters(), lr=0.01))

    def compute_loss(batch, step):
        raw = model(batch["image"])
        if seen is not None:
            seen.append(raw.dtype)
        loss = ((raw.float().squeeze(1) - batch["target"]) ** 2).mean() * loss_factor
        return loss, {"loss": loss.item()}

    config = TrainConfig(**{"steps": steps, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2,
                            "eval_every": 10**9, "grad_clip": 0.0, "device": "cpu", **settings})
    run_training(model=model, optimizer=optimizer, compute_loss=compute_loss, dataset=dataset, config=config,
                 state_path=state, run_id={"test": 1, "config": config.to_dict()}, show_progress=False,
                 before_step=before_step)
    return model


def _close(a, b, **tolerance):
    return all(torch.allclose(p, q, **tolerance) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("parts", [2, 3])  # 3: micro-batches of 3, 3 and 2 samples, weighted by size
def test_accumulated_micro_batches_equal_one_batch(points, tmp_path, parts):
    whole = _train(points, tmp_path / "a.safetensors", sgd=True)
    accumulated = _train(points, tmp_path / "b.safetensors", sgd=True, accumulate=parts)
    assert _close(whole, accumulated, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights(points, tmp_path):
    seen = []
    reference = _train(points, tmp_path / "fp32.safetensors")
    model = _train(points, tmp_path / "bf16.safetensors", precision="bf16", seen=seen)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not _close(model, reference, rtol=0, atol=0)  # it did train differently...
    assert _close(model, reference, rtol=0.05, atol=0.02)  # ...but to nearly the same weights


def test_fp16_uses_a_grad_scaler_whose_state_resumes(points, tmp_path):
    assert grad_scaler(torch.device("cpu"), "fp16") is not None
    assert grad_scaler(torch.device("cpu"), "bf16") is None
    seen = []
    # At 10x the loss, fp16 gradients overflow at the initial scale (2**16): the scaler
    # skips the first steps and backs off, so a resume that forgot its scale would differ.
    reference = _train(points, tmp_path / "reference.safetensors", precision="fp16", seen=seen, loss_factor=10)
    assert set(seen) == {torch.float16}

    def crash(step):
        if step == 5:
            raise KeyboardInterrupt

    state = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(points, state, precision="fp16", before_step=crash, loss_factor=10)
    _, document = read_container_header(state, format_name="mtlcompress.train_state", versions=(1,),
                                        error=CheckpointError)
    assert 1.0 < document["grad_scaler"]["scale"] < 2.0**16
    resumed = _train(points, state, precision="fp16", loss_factor=10)
    assert _close(resumed, reference, rtol=0, atol=0)


def test_workers_give_the_same_batches(points, tmp_path):
    reference = _train(points, tmp_path / "a.safetensors")
    with_workers = _train(points, tmp_path / "b.safetensors", workers=2)
    assert _close(reference, with_workers, rtol=0, atol=0)


def test_a_resume_may_change_device_and_workers_but_not_precision(points, tmp_path):
    reference = _train(points, tmp_path / "reference.safetensors")

    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    state = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(points, state, before_step=crash)
    with pytest.raises(CheckpointError, match="different settings"):
        _train(points, state, precision="bf16")
    resumed = _train(points, state, device="auto", workers=1)  # "auto" is the CPU here, or a GPU
    assert _close(resumed.cpu(), reference, rtol=1e-5, atol=1e-6)


def test_unknown_precision_is_refused():
    with pytest.raises(MtlCompressError, match="unknown precision"):
        autocast(torch.device("cpu"), "fp8")
