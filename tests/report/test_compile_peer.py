"""The torch.compile peer: timed beside the eager T models, unavailable without crashing."""

from __future__ import annotations

import torch

from mtlcompress.report import compile_peer


def test_compiled_models_are_timed_interleaved(make_micro_bundle, fixed_timings, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)  # no inductor in tests
    result = compile_peer.compiled_peer(make_micro_bundle(), torch.rand(1, 3, 32, 32), repeats=2, warmup=0,
                                        timings=fixed_timings)
    assert result["available"] and result["reason"] == "" and len(compiled) == 2
    assert set(result["images"]) == set(compile_peer.COMPILE_VARIANTS)
    assert all(s["repeats"] == 2 for s in result["images"].values())
    median = {name: s["median_s"] for name, s in result["images"].items()}
    assert result["ratios"]["best_models/shared"] == min(median["independent"],
                                                         median["independent_compiled"]) / median["shared"]


def test_a_failing_compiler_is_reported_not_raised(make_micro_bundle, fixed_timings, monkeypatch):
    def broken(model):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
    monkeypatch.setattr(torch, "compile", broken)
    result = compile_peer.compiled_peer(make_micro_bundle(), torch.rand(1, 3, 32, 32), repeats=1, warmup=0,
                                        timings=fixed_timings)
    assert not result["available"] and "No working C++ compiler" in result["reason"]
    assert "independent_compiled" not in result["images"]
    median = {name: s["median_s"] for name, s in result["images"].items()}
    assert result["ratios"]["best_models/shared"] == median["independent"] / median["shared"]
