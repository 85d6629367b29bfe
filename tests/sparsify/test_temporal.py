import pytest
import torch

from mtlcompress.errors import DataError
from mtlcompress.models.checkpoint import load_checkpoint, read_checkpoint_info
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.sparsify.stage_temporal import sparsify_temporal
from mtlcompress.sparsify.stage_weights import sparsify_weights
from mtlcompress.sparsify.temporal_data import FramePairs, split_clips
from mtlcompress.training.loop import TrainConfig

FAST = TrainConfig(steps=3, batch_size=4, warmup_steps=1, eval_every=10**9, checkpoint_every=2)


def test_frame_pairs_cover_every_offset(quick_demo):
    train, held_out = split_clips(quick_demo["data"], ["depth"], 32)
    assert len(train) == 1 and len(held_out) == 1
    pairs = FramePairs(train, max_offset=2)
    # 4 frames: (1,0) (2,1) (2,0) (3,2) (3,1)
    assert len(pairs) == 5
    sample = pairs[0]
    assert sample["previous"].shape == sample["image"].shape and "depth" in sample
    assert not torch.equal(sample["previous"], sample["image"])


def test_base_temporal_stage_keeps_the_base_and_adds_thresholds(quick_demo, tmp_path):
    out = tmp_path / "semseg.temporal.safetensors"
    result = sparsify_temporal(task=quick_demo["checkpoints"]["semseg"], data=quick_demo["data"], out=out,
                               config=FAST, tolerance=0.05, show_progress=False)
    info = read_checkpoint_info(out)
    layers = set(shared_linear_names(info.backbone.depth))
    assert set(info.sparsity["activation"]["temporal_thresholds"]) == layers
    assert result.delta_density == 0.0  # the fine-tuned base is the new base
    assert 0.0 <= result.extra["temporal_density"] <= 1.0


def test_sub_task_temporal_stage_keeps_its_support_and_task_thresholds(quick_demo, tmp_path):
    ckpts = quick_demo["checkpoints"]
    stage1 = tmp_path / "w.safetensors"
    sparsify_weights(base=ckpts["semseg"], task=ckpts["depth"], data=quick_demo["data"], out=stage1,
                     density=0.05, method="magnitude", show_progress=False)
    out = tmp_path / "t.safetensors"
    result = sparsify_temporal(task=stage1, base=ckpts["semseg"], data=quick_demo["data"], out=out,
                               token_density=0.3, config=FAST, show_progress=False)
    assert result.extra["temporal_density"] <= 0.3
    base, _ = load_checkpoint(ckpts["semseg"])
    before, _ = load_checkpoint(stage1)
    after, _ = load_checkpoint(out)
    base_w = dict(base.backbone.named_parameters())
    for (name, b), (_, a) in zip(before.backbone.named_parameters(), after.backbone.named_parameters()):
        assert torch.equal(b != base_w[name], a != base_w[name]), name


def test_one_clip_is_not_enough(quick_demo, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(quick_demo["data"], data)
    shutil.rmtree(data / "videos" / "clip_001")
    with pytest.raises(DataError, match="at least two video clips"):
        sparsify_temporal(task=quick_demo["checkpoints"]["semseg"], data=data, out=tmp_path / "x.safetensors",
                          config=FAST, show_progress=False)
