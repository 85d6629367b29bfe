"""Analytic FLOPs: the dense count is what FlopCounterMode measures; the bundle count
follows the method's formula on a bundle whose delta non-zeros are known exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.backbone import PRESETS, resolve_backbone, with_image_size
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.report import flops

MICRO = PRESETS["micro"]
K = 5  # exact non-zeros per changed tensor
CHANGED = ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight")
THRESHOLDED = ("blocks.0.attn.qkv", "blocks.1.mlp.fc1")


def measured_flops(info: CheckpointInfo) -> dict[str, int]:
    """FlopCounterMode on one image (meta tensors: shapes only, so ViT-S is instant)."""
    with torch.device("meta"):
        model = build_model(info).eval()
        images = torch.rand(1, 3, *info.backbone.img_size)
    for block in model.backbone.blocks:
        block.attn.fused_attn = False  # what the fused kernel is counted as depends on the device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images)
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()} | {
        "total": counter.get_total_flops()}


@pytest.mark.parametrize("config, hidden", [
    (MICRO, 16), (resolve_backbone("vit_small_patch16_224"), 128),
    (with_image_size(MICRO, (32, 48)), 16),  # H * W tokens
    (dataclasses.replace(MICRO, mlp_layer="swiglu", norm_layer="rmsnorm"), 16),
    (dataclasses.replace(MICRO, mlp_layer="swiglu_packed", mlp_ratio=5.25), 16),
], ids=["micro", "vit_small_224", "micro_32x48", "micro_swiglu", "micro_swiglu_packed"])
def test_dense_flops_match_flop_counter(config, hidden):
    info = CheckpointInfo(task="normals", backbone=config, out_channels=3, head_hidden=hidden)
    ours = flops.dense_model_flops(config, 3, hidden)
    theirs = measured_flops(info)
    assert abs(ours["total"] - theirs["total"]) <= 0.01 * theirs["total"]
    assert ours["linear"] == theirs["aten.addmm"]
    assert ours["patch_embed"] + ours["head"] == theirs["aten.convolution"]
    assert ours["attention"] == theirs["aten.bmm"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    """semseg base; depth = base + exactly K non-zeros in each CHANGED tensor, thresholds on THRESHOLDED."""
    folder = tmp_path_factory.mktemp("flops")
    torch.manual_seed(0)
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=4, num_classes=4, head_hidden=16)
    base = build_model(base_info)
    save_checkpoint(base, base_info, folder / "semseg.safetensors")
    info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1, head_hidden=8, sparsity={
        "activation": {"granularity": "token", "task_thresholds": {name: 0.1 for name in THRESHOLDED}}})
    model = build_model(info)
    weights = {k: v.clone() for k, v in base.backbone.state_dict().items()}
    for name in CHANGED:
        weights[name].view(-1)[:K] += 0.5
    model.backbone.load_state_dict(weights)
    save_checkpoint(model, info, folder / "depth.safetensors")
    return Bundle.from_checkpoints(folder / "semseg.safetensors", [folder / "depth.safetensors"])


def test_bundle_flops_follow_the_formula(bundle):
    n, d, hidden = 17, 32, 128  # micro: 4x4 patches + class token; width; mlp width
    density = 0.25
    report = flops.flops_report(bundle, {"depth": {"blocks.0.attn.qkv": density}})
    depth = report["per_task"]["bundle"]["depth"]
    # qkv: measured density; fc1: thresholded, not measured -> assumed 1; fc2: no threshold -> exact.
    assert depth["per_layer"]["blocks.0.attn.qkv"] == 2 * K * n + round(2 * n * d * 3 * d * density)
    assert depth["per_layer"]["blocks.1.mlp.fc1"] == 0 + 2 * n * d * hidden
    assert depth["per_layer"]["blocks.1.mlp.fc2"] == 2 * n * hidden * d
    assert depth["patch_embed"] == 2 * K * 16
    assert depth["attention"] == 2 * 4 * n * n * d
    assert depth["head"] == flops.head_flops(MICRO, 1, 8)
    assert depth["total"] == depth["patch_embed"] + depth["linear"] + depth["attention"] + depth["head"]
    uniform = flops.bundle_flops(bundle, {"depth": {layer: 0.5 for layer in THRESHOLDED}})["depth"]
    assert uniform["total"] == uniform["fixed"] + uniform["slope"] * 0.5
    assert report["per_task"]["bundle"]["semseg"]["total"] == report["per_task"]["independent"]["semseg"]["total"]
    limit = report["per_task"]["limit"]["depth"]
    assert limit["total"] == depth["attention"] + depth["head"]
    totals = report["totals"]
    assert totals["limit"]["total"] < totals["bundle"]["total"]
    assert totals["independent"]["total"] == sum(t["total"] for t in report["per_task"]["independent"].values())


def test_a_bundle_run_by_the_dense_path_claims_no_savings(bundle):
    dense_path = dataclasses.replace(bundle, backbone=dataclasses.replace(MICRO, qk_norm=True))
    assert dense_path.backbone.dense_path_reason
    report = flops.flops_report(dense_path, {"depth": {"blocks.0.attn.qkv": 0.25}})
    assert report["totals"]["bundle"]["total"] == report["totals"]["independent"]["total"]
    assert report["per_task"]["bundle"]["depth"]["slope"] == 0
    assert flops.flops_report(bundle)["totals"]["bundle"]["total"] < report["totals"]["bundle"]["total"]


def test_a_low_rank_delta_costs_its_thin_factors(bundle):
    """``dW = A B`` is dense as a matrix, but the runtime multiplies by A and B."""
    n, d, rank = 17, 32, 2
    left, right = torch.randn(3 * d, rank), torch.randn(rank, d)
    tasks = dict(bundle.tasks)
    tasks["depth"] = dataclasses.replace(tasks["depth"], delta={**tasks["depth"].delta,
                                                                "blocks.0.attn.qkv.weight": left @ right})
    low_rank = dataclasses.replace(bundle, tasks=tasks)
    per_layer = flops.bundle_flops(low_rank, {"depth": {"blocks.0.attn.qkv": 0.0}})["depth"]["per_layer"]
    assert per_layer["blocks.0.attn.qkv"] == 2 * rank * (d + 3 * d) * n
