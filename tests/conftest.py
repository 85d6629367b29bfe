"""Shared fixtures: tiny synthetic data and tiny trained checkpoints, made once per
test session (the 'quick' demo preset: micro ViT, 32 px, a few optimiser steps)."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.demo import run_demo


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
