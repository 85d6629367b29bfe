import pytest
from safetensors.torch import load_file

import mtlcompress.training.loop as loop
from mtlcompress.sparsify.stage_finetune import finetune_deltas
from mtlcompress.sparsify.stage_weights import sparsify_weights
from mtlcompress.training.loop import TrainConfig

CONFIG = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=10**9, checkpoint_every=2)


def test_a_killed_stage_resumes_to_the_same_result(quick_demo, tmp_path, monkeypatch):
    ckpts = quick_demo["checkpoints"]
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=quick_demo["data"], out=stage1,
                     density=0.05, method="magnitude", show_progress=False)
    reference = tmp_path / "reference.safetensors"
    finetune_deltas(base=ckpts["semseg"], task=stage1, data=quick_demo["data"], out=reference, config=CONFIG,
                    show_progress=False)

    real_flip, calls = loop.random_hflip, []

    def dies_at_step_five(batch, generator):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # stands in for kill -9 after the step-4 checkpoint
        return real_flip(batch, generator)

    out = tmp_path / "killed.safetensors"
    monkeypatch.setattr(loop, "random_hflip", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        finetune_deltas(base=ckpts["semseg"], task=stage1, data=quick_demo["data"], out=out, config=CONFIG,
                        show_progress=False)
    assert (tmp_path / "killed.resume.safetensors").exists() and not out.exists()
    steps_after_restart = []

    def counting(batch, generator):
        steps_after_restart.append(1)
        return real_flip(batch, generator)

    monkeypatch.setattr(loop, "random_hflip", counting)
    finetune_deltas(base=ckpts["semseg"], task=stage1, data=quick_demo["data"], out=out, config=CONFIG,
                    show_progress=False)
    assert len(steps_after_restart) == 2  # continued from the step-4 state, not from scratch
    expected, resumed = load_file(str(reference)), load_file(str(out))
    for name in expected:
        assert (expected[name] == resumed[name]).all(), name
