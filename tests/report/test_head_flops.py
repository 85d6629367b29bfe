"""Each head type's own FLOPs: linear and multi-level heads by their formulas, a user's
head counted, and a bundle's totals built from each task's own head."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.head_module import HEAD_MODULES_ENV
from mtlcompress.report import flops

MICRO = PRESETS["micro"]  # 4x4 patches of 8 px, width 32, depth 2
P, D = 16, 32
USER_HEAD = '''
import torch.nn as nn

def wide_probe(embed_dim, out_channels, patch_size):
    return WideProbe(embed_dim, out_channels)

class WideProbe(nn.Module):
    def __init__(self, embed_dim, out_channels):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(), nn.Linear(64, out_channels))

    def forward(self, tokens, grid):
        return self.mlp(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
'''


@pytest.fixture
def user_head(tmp_path, monkeypatch):
    (tmp_path / "flops_heads.py").write_text(USER_HEAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(HEAD_MODULES_ENV, "flops_heads")
    return "flops_heads:wide_probe"


def _info(task="depth", out_channels=1, **head) -> CheckpointInfo:
    return CheckpointInfo(task=task, backbone=MICRO, out_channels=out_channels, head_hidden=8, **head)


def test_each_head_type_counts_its_own_products(user_head):
    assert flops.task_head_flops(_info()) == flops.head_flops(MICRO, 1, 8)
    assert flops.task_head_flops(_info(head_type="linear")) == 2 * P * D * 1
    # two 1x1 projections to hidden 8, a 3x3 fusion, a 1x1 prediction
    assert flops.task_head_flops(_info(head_type="multilevel", head_layers=(1, 2))) == (
        2 * 2 * P * D * 8 + 2 * P * 8 * 8 * 9 + 2 * P * 8 * 1)
    assert flops.task_head_flops(_info(head_type="module", head_module=user_head)) == 2 * P * (D * 64 + 64 * 1)


def test_bundle_scenarios_use_each_tasks_head(tmp_path, user_head):
    torch.manual_seed(0)
    base_info = _info("semseg", 4, num_classes=4, head_type="linear")
    save_checkpoint(build_model(base_info), base_info, tmp_path / "semseg.safetensors")
    subs = {"depth": _info(head_type="multilevel", head_layers=(2,)), "edges": _info("edges", head_type="module",
                                                                                     head_module=user_head)}
    for task, info in subs.items():
        save_checkpoint(build_model(info), info, tmp_path / f"{task}.safetensors")
    bundle = Bundle.from_checkpoints(tmp_path / "semseg.safetensors",
                                     [tmp_path / f"{t}.safetensors" for t in subs])
    report = flops.flops_report(bundle)
    expected = {"semseg": 2 * P * D * 4, "depth": 2 * P * D * 8 + 2 * P * 8 * 8 * 9 + 2 * P * 8,
                "edges": 2 * P * (D * 64 + 64)}
    for scenario in ("independent", "bundle", "limit"):
        assert {t: r["head"] for t, r in report["per_task"][scenario].items()} == expected
    assert report["totals"]["limit"]["head"] == sum(expected.values())
