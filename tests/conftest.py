"""Shared fixtures: tiny synthetic data and tiny trained checkpoints, made once per
test session (the 'quick' demo preset: micro ViT, 32 px, a few optimiser steps); a
micro bundle with random deltas and fixed kernel timings, for runtime and benchmark
tests that need no training."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle, BundleTask
from mtlcompress.demo import run_demo
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

MICRO = PRESETS["micro"]
# Timings that make every thresholded layer take the token path, without calibrating.
FIXED_TIMINGS = KernelTimings(dense=LinearCost(1e-3, 1e-9), token=LinearCost(0.0, 1e-12),
                              element=LinearCost(1.0, 1.0), sparse_weight=LinearCost(0.0, 1e-12),
                              device="cpu", dtype="float32", device_name="test")


def micro_bundle(sub_tasks: Sequence[tuple[str, int]] = (("depth", 1),)) -> Bundle:
    """A semseg base and each ``(task, out_channels)`` sub-task = base + ~5% random
    delta; task thresholds 0.02 and temporal thresholds 0.05 on every layer."""
    torch.manual_seed(0)
    layers = shared_linear_names(MICRO.depth)
    base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=4, head_hidden=8, num_classes=4)
    base = build_model(base_info)
    weights = {k: v.detach().clone() for k, v in base.backbone.state_dict().items()}
    tasks = {"semseg": BundleTask(base_info, dict(base.head.state_dict()), {}, ActivationSparsity(
        temporal_thresholds=dict.fromkeys(layers, 0.05)))}
    for task, channels in sub_tasks:
        info = CheckpointInfo(task=task, backbone=MICRO, out_channels=channels, head_hidden=8)
        delta = {k: (torch.rand(w.shape) < 0.05) * torch.randn(w.shape) * 0.05 for k, w in weights.items()}
        tasks[task] = BundleTask(info, dict(build_model(info).head.state_dict()), delta, ActivationSparsity(
            task_thresholds=dict.fromkeys(layers, 0.02), temporal_thresholds=dict.fromkeys(layers, 0.05)))
    return Bundle(backbone=MICRO, base_task="semseg", base_weights=weights, tasks=tasks)


@pytest.fixture(scope="session")
def make_micro_bundle() -> Callable[..., Bundle]:
    """:func:`micro_bundle` (a factory: each call builds a fresh bundle)."""
    return micro_bundle


@pytest.fixture(scope="session")
def fixed_timings() -> KernelTimings:
    return FIXED_TIMINGS


@pytest.fixture(scope="session")
def points() -> list[dict[str, torch.Tensor]]:
    """A dataset (a list: indexable, with a length, picklable for DataLoader workers) of
    48 random 3x4x4 images whose target is 3x their mean: a regression that a tiny MLP
    learns in a few steps, for the training-loop tests (CPU and GPU)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 4, 4, generator=generator)
    y = x.mean(dim=(1, 2, 3)) * 3
    return [{"image": x[i], "target": y[i]} for i in range(48)]


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    # CI has 2 cores; more threads only oversubscribe.
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``{"data": Path, "checkpoints": {task: Path}, "init": Path}`` from the quick demo."""
    out = tmp_path_factory.mktemp("quick-demo")
    report = run_demo(out, "quick", show_progress=False, stages=("train",))
    return {"data": out / "data", "init": out / "init.safetensors",
            "checkpoints": {task: out / "checkpoints" / f"{task}.safetensors" for task in report["checkpoints"]}}
