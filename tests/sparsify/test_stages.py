import json
import shutil

import pytest
import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.models.checkpoint import load_checkpoint, read_checkpoint_info
from mtlcompress.models.taps import record_linear_inputs, shared_linear_names
from mtlcompress.sparsify.stage_activations import sparsify_activations
from mtlcompress.sparsify.stage_finetune import finetune_deltas
from mtlcompress.sparsify.stage_weights import sparsify_weights
from mtlcompress.training.loop import TrainConfig

FAST = TrainConfig(steps=4, batch_size=8, warmup_steps=1, eval_every=10**9, checkpoint_every=2)


def _support(path, base_path):
    model, _ = load_checkpoint(path)
    base, _ = load_checkpoint(base_path)
    base_weights = dict(base.backbone.named_parameters())
    return {n: (p != base_weights[n]) for n, p in model.backbone.named_parameters()}


@pytest.mark.parametrize("density", [0.01, 0.02, 0.05])
def test_l0_stage_lands_on_the_target_density(quick_demo, tmp_path, density):
    ckpts = quick_demo["checkpoints"]
    result = sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=quick_demo["data"],
                              out=tmp_path / "w.safetensors", density=density, config=FAST, show_progress=False)
    support = _support(tmp_path / "w.safetensors", ckpts["semseg"])
    measured = sum(int(m.sum()) for m in support.values()) / sum(m.numel() for m in support.values())
    assert abs(measured - density) / density < 0.1
    assert result.delta_density == pytest.approx(measured)
    assert 0 < result.extra["expected_density"] <= 1
    info = read_checkpoint_info(tmp_path / "w.safetensors")
    assert info.sparsity["stage"] == "weights" and info.sparsity["base"]["task"] == "semseg"


def test_magnitude_keeps_the_largest_differences(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    sparsify_weights(base=ckpts["semseg"], task=ckpts["edges"], data=quick_demo["data"],
                     out=tmp_path / "m.safetensors", density=0.1, method="magnitude", show_progress=False)
    base, _ = load_checkpoint(ckpts["semseg"])
    original, _ = load_checkpoint(ckpts["edges"])
    pruned, _ = load_checkpoint(tmp_path / "m.safetensors")
    base_w = dict(base.backbone.named_parameters())
    orig_w = dict(original.backbone.named_parameters())
    kept, dropped = [], []
    for name, p in pruned.backbone.named_parameters():
        delta = (orig_w[name] - base_w[name]).abs()
        keep = p != base_w[name]
        kept.append(delta[keep])
        dropped.append(delta[~keep])
    assert torch.cat(kept).min() >= torch.cat(dropped).max()


def test_finetune_never_changes_the_support(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["normals"], data=quick_demo["data"], out=stage1,
                     density=0.05, method="magnitude", show_progress=False)
    stage2 = tmp_path / "f.safetensors"
    finetune_deltas(base=ckpts["semseg"], task=stage1, data=quick_demo["data"], out=stage2,
                    config=TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=10**9),
                    show_progress=False)
    before, after = _support(stage1, ckpts["semseg"]), _support(stage2, ckpts["semseg"])
    assert all(torch.equal(before[n], after[n]) for n in before)
    changed = [(load_checkpoint(stage1)[0].state_dict()[k] != v).any() for k, v in
               load_checkpoint(stage2)[0].state_dict().items() if k.startswith("backbone.")]
    assert any(changed), "the kept values should have been fine-tuned"


def _mean_token_delta(student_path, base_path, data):
    from mtlcompress.data.layouts import open_dataset

    student, info = load_checkpoint(student_path)
    base, _ = load_checkpoint(base_path)
    images = torch.stack([open_dataset(data, "train", tasks=[], size=32)[i]["image"] for i in range(8)])
    layers = shared_linear_names(info.backbone.depth)
    with torch.no_grad(), record_linear_inputs(base.backbone, layers) as x0, \
            record_linear_inputs(student.backbone, layers) as xt:
        base(images)
        student(images)
    return sum(float((xt[l] - x0[l]).pow(2).mean(-1).sqrt().mean()) for l in layers) / len(layers)


def test_activation_penalty_shrinks_activation_deltas(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=quick_demo["data"], out=stage1,
                     density=0.2, method="magnitude", show_progress=False)
    config = TrainConfig(steps=15, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=10**9)
    outputs = {}
    for strength in (0.0, 50.0):
        outputs[strength] = tmp_path / f"a{strength}.safetensors"
        result = sparsify_activations(base=ckpts["semseg"], task=stage1, data=quick_demo["data"],
                                      out=outputs[strength], strength=strength, config=config,
                                      calibration_images=8, show_progress=False)
        assert 0.0 <= result.extra["activation_density"] <= 1.0
    without = _mean_token_delta(outputs[0.0], ckpts["semseg"], quick_demo["data"])
    with_penalty = _mean_token_delta(outputs[50.0], ckpts["semseg"], quick_demo["data"])
    assert with_penalty < 0.8 * without
    info = read_checkpoint_info(outputs[50.0])
    thresholds = info.sparsity["activation"]["task_thresholds"]
    assert set(thresholds) == set(shared_linear_names(info.backbone.depth))


def test_target_token_density_is_met(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["saliency"], data=quick_demo["data"], out=stage1,
                     density=0.2, method="magnitude", show_progress=False)
    result = sparsify_activations(base=ckpts["semseg"], task=stage1, data=quick_demo["data"],
                                  out=tmp_path / "a.safetensors", token_density=0.25, config=FAST,
                                  calibration_images=8, show_progress=False)
    assert 0.1 <= result.extra["activation_density"] <= 0.25


def test_distillation_works_without_labels(quick_demo, tmp_path):
    data = tmp_path / "unlabelled"
    shutil.copytree(quick_demo["data"], data)
    shutil.rmtree(data / "depth")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["tasks"].remove("depth")
    (data / "manifest.json").write_text(json.dumps(manifest))
    ckpts = quick_demo["checkpoints"]
    result = sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=data, out=tmp_path / "d.safetensors",
                              density=0.05, config=FAST, show_progress=False)
    assert result.extra["supervision"] == "distill"
    with pytest.raises(MtlCompressError, match="no 'depth' labels"):
        sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=data, out=tmp_path / "e.safetensors",
                         density=0.05, supervision="labels", config=FAST, show_progress=False)


def test_same_task_as_base_is_refused(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    with pytest.raises(MtlCompressError, match="same task as the base"):
        sparsify_weights(base=ckpts["semseg"], task=ckpts["semseg"], data=quick_demo["data"],
                         out=tmp_path / "x.safetensors", density=0.05, show_progress=False)


def test_stage_against_the_wrong_base_is_refused(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=quick_demo["data"], out=stage1,
                     density=0.05, method="magnitude", show_progress=False)
    with pytest.raises(MtlCompressError, match="different base"):
        finetune_deltas(base=ckpts["edges"], task=stage1, data=quick_demo["data"], out=tmp_path / "f.safetensors",
                        config=FAST, show_progress=False)
