"""The CUDA-graph peers: reported unavailable off CUDA (never raised); with the capture
replaced by an eager call, every variant is timed interleaved and the ratios are the
medians' (the CUDA capture itself runs in tests/gpu)."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.report import graph_peer
from mtlcompress.runtime import graphed_images


def test_off_cuda_the_peer_is_unavailable(make_micro_bundle, fixed_timings):
    result = graph_peer.graphed_peer(make_micro_bundle(), torch.rand(1, 3, 32, 32), device="cpu",
                                     timings=fixed_timings)
    assert result == {"available": False, "reason": graph_peer.NEEDS_CUDA, "images": {}, "ratios": {},
                      "static_path": None}


@pytest.fixture
def eager_capture(monkeypatch):
    """Pretend the CPU can capture: a "captured" call runs the function eagerly."""
    def capture(fn, example):
        captures.append(example.shape)
        return torch.no_grad()(fn)
    captures: list = []
    for module in (graph_peer, graphed_images):
        monkeypatch.setattr(module, "cuda_graphs_available", lambda device: True)
        monkeypatch.setattr(module, "CapturedCall", capture)
    return captures


def test_every_variant_is_timed(make_micro_bundle, fixed_timings, eager_capture):
    bundle = make_micro_bundle((("depth", 1), ("normals", 3)))
    result = graph_peer.graphed_peer(bundle, torch.rand(2, 3, 32, 32), repeats=2, warmup=1, device="cpu",
                                     timings=fixed_timings)
    assert result["available"] and result["reason"] == ""
    assert set(result["images"]) == set(graph_peer.GRAPH_VARIANTS)
    assert all(s["repeats"] == 2 for s in result["images"].values())
    # The T models, then the shared engine's static call (batch 2), captured again after each overflow.
    assert len(eager_capture) == 3 + 1 + result["static_path"]["overflows"]
    median = {name: s["median_s"] for name, s in result["images"].items()}
    assert result["ratios"]["independent_graphed/shared_graphed"] == median["independent_graphed"] / median[
        "shared_graphed"]
    assert set(result["static_path"]["capacities"]) == {2}


def test_a_failing_capture_is_reported_not_raised(make_micro_bundle, fixed_timings, monkeypatch):
    def broken(fn, example):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(graph_peer, "cuda_graphs_available", lambda device: True)
    monkeypatch.setattr(graph_peer, "CapturedCall", broken)
    result = graph_peer.graphed_peer(make_micro_bundle(), torch.rand(1, 3, 32, 32), device="cpu",
                                     timings=fixed_timings)
    assert not result["available"] and "not permitted" in result["reason"] and result["images"] == {}
