"""Training at a non-square size: data resized to (H, W), and a shared initialisation at
another grid resampled with timm's ``resample_abs_pos_embed`` from the grid it records."""

from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from mtlcompress.data.layouts import open_dataset
from mtlcompress.data.synth import generate_scenes
from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import PRESETS, build_backbone, with_image_size
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.models.weights import save_backbone_init
from mtlcompress.training.config import TrainConfig
from mtlcompress.training.pretrain import pretrain_backbone
from mtlcompress.training.single_task import train_single_task

MICRO = PRESETS["micro"]
QUICK = TrainConfig(steps=1, batch_size=2, warmup_steps=1, eval_every=10**9)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, images=4, size=(40, 56))
    return root


def test_datasets_resize_images_and_labels_to_height_width(scenes):
    sample = open_dataset(scenes, split="train", tasks=["semseg", "normals"], size=(32, 48))[0]
    assert sample["image"].shape == (3, 32, 48) and sample["semseg"].shape == (32, 48)
    assert sample["normals"].shape == (3, 32, 48)
    assert open_dataset(scenes, split="train", tasks=["depth"])[0]["depth"].shape == (1, 40, 56)  # native size


def test_pretrain_and_train_at_a_non_square_size(scenes, tmp_path):
    init = tmp_path / "init.safetensors"
    config = pretrain_backbone(data=scenes, out=init, backbone="micro", img_size=(32, 48), tasks=["depth"],
                               config=QUICK, show_progress=False)
    assert config.img_size == (32, 48) and config.grid_size == (4, 6)
    info = train_single_task(task="depth", data=scenes, out=tmp_path / "depth.safetensors", init=init,
                             config=QUICK, show_progress=False)
    model, stored = load_checkpoint(tmp_path / "depth.safetensors")
    assert stored.backbone.img_size == info.backbone.img_size == (32, 48)
    assert model(torch.rand(1, 3, 32, 48)).shape == (1, 1, 32, 48)


def test_an_init_at_another_grid_is_resampled_from_its_own_grid(scenes, tmp_path):
    """A 32x48 init (4x6 grid) trained at 48x32 (6x4): timm's helper with old_size=(4, 6).
    A square guess could not even reshape 24 tokens; a transposed one would scramble them."""
    torch.manual_seed(0)
    wide = with_image_size(MICRO, (32, 48))
    backbone = build_backbone(wide)
    save_backbone_init(backbone, wide, tmp_path / "wide.safetensors")
    train_single_task(task="depth", data=scenes, out=tmp_path / "tall.safetensors", init=tmp_path / "wide.safetensors",
                      img_size=(48, 32), config=TrainConfig(steps=1, batch_size=2, lr=0.0, warmup_steps=1,
                                                            eval_every=10**9), show_progress=False)
    model, info = load_checkpoint(tmp_path / "tall.safetensors")
    assert info.backbone.grid_size == (6, 4)
    expected = resample_abs_pos_embed(backbone.pos_embed.detach(), new_size=[6, 4], old_size=[4, 6],
                                      num_prefix_tokens=1)
    assert torch.allclose(model.backbone.pos_embed.detach(), expected, atol=1e-6)


def test_a_size_that_is_not_a_multiple_of_the_patch_is_refused(scenes, tmp_path):
    with pytest.raises(CheckpointError, match=r"32x44 \(height x width\) is not a multiple of patch size 8"):
        train_single_task(task="depth", data=scenes, out=tmp_path / "x.safetensors", backbone="micro",
                          img_size=(32, 44), config=QUICK, show_progress=False)


def test_train_cli_takes_height_then_width(scenes, tmp_path, monkeypatch, capsys):
    import json
    import sys

    from mtlcompress.cli.main import main

    out = tmp_path / "cli.safetensors"
    monkeypatch.setattr(sys, "argv", ["mtlcompress", "train", "--task", "depth", "--data", str(scenes),
                                      "--backbone", "micro", "--img-size", "32", "48", "--steps", "1",
                                      "--batch-size", "2", "--out", str(out), "--json"])
    main()
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(out)
    assert load_checkpoint(out)[1].backbone.img_size == (32, 48)
