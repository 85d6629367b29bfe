"""Under bf16/fp16 autocast the sparsify machinery that must stay exact stays fp32:
gate samples, the expected density and the density controller's penalty."""

import pytest
import torch

from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model
from mtlcompress.sparsify.delta_model import DeltaModel
from mtlcompress.sparsify.density_control import LagrangianDensityController


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gates_and_density_control_stay_fp32_under_autocast(dtype):
    torch.manual_seed(0)
    model = build_model(CheckpointInfo(task="depth", backbone=PRESETS["micro"], out_channels=1, head_hidden=8))
    delta_model = DeltaModel(model).train()
    controller = LagrangianDensityController(0.1, warmup_steps=1)
    images = torch.randn(2, 3, *PRESETS["micro"].img_size)
    with torch.autocast("cpu", dtype=dtype):
        raw = delta_model(images)
        expected = delta_model.expected_density()
        penalty = controller.penalty(expected, 5)
    assert raw.dtype == dtype  # the network itself ran in low precision
    assert expected.dtype == torch.float32 and penalty.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in delta_model.parameters())
    (raw.float().mean() + penalty).backward()
    gate = next(iter(delta_model.gates.values()))
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.dtype == torch.float32
