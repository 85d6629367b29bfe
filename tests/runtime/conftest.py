"""Builds the shared engine's per-layer state (``LayerPlanner``) for a bundle, so the
stacked-row executors can be tested without an engine around them."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.runtime.layer_plan import LayerPlanner, build_engine_task


def exact_thresholds(bundle: Bundle) -> Bundle:
    """Every threshold 0 (every delta kept): the executors must then be exact."""
    layers = shared_linear_names(bundle.backbone.depth)
    for name, entry in bundle.tasks.items():
        if name != bundle.base_task:
            entry.activation.task_thresholds = dict.fromkeys(layers, 0.0)
        entry.activation.temporal_thresholds = dict.fromkeys(layers, 0.0)
    return bundle


@pytest.fixture
def make_planner(fixed_timings):
    """``make_planner(bundle, planner_class=LayerPlanner)``: the base and sub-tasks of
    ``bundle`` on the CPU and the planner over them, priced by the fixed timings."""
    def make(bundle: Bundle, planner_class: type[LayerPlanner] = LayerPlanner) -> LayerPlanner:
        layers = shared_linear_names(bundle.backbone.depth)
        base = build_engine_task(bundle, bundle.base_task, layers, torch.device("cpu"))
        subs = [build_engine_task(bundle, t, layers, torch.device("cpu")) for t in bundle.sub_tasks]
        return planner_class(base, subs, fixed_timings, torch.device("cpu"), bundle.backbone.num_tokens)
    return make


@pytest.fixture(scope="module")
def one_thread():
    """Micro models gain nothing from threads, and a busy 2-core machine makes them stall
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
