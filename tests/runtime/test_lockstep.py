"""The lockstep row executor on its own: token-granularity tasks' video frames, all
tasks stacked, given only the engine's public per-layer state (``LayerPlanner``)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mtlcompress.runtime import lockstep
from mtlcompress.runtime.layer_plan import LayerPlanner
from mtlcompress.runtime.lockstep import LockstepRows

from .conftest import exact_thresholds

SUB_TASKS = (("depth", 1), ("normals", 3))
TOL = 1e-4


def untimed(kind: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def rows_for(planner: LayerPlanner) -> LockstepRows:
    return LockstepRows(planner, [planner.base, *planner.subs], untimed)


def frame_tokens(planner: LayerPlanner, seed: int, batch: int = 2) -> list[torch.Tensor]:
    tokens = planner.base.backbone.patch_embed.num_patches + planner.base.backbone.num_prefix_tokens
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, planner.base.backbone.embed_dim, generator=gen)
            for _ in [planner.base, *planner.subs]]


def moved(embeds: list[torch.Tensor], rows: slice, seed: int) -> list[torch.Tensor]:
    """The same tokens with ``rows`` of every task replaced."""
    gen = torch.Generator().manual_seed(seed)
    out = [e.clone() for e in embeds]
    for e in out:
        e[:, rows] = torch.randn(e[:, rows].shape, generator=gen)
    return out


def reference(planner: LayerPlanner, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [task.backbone.blocks(x) for task, x in zip([planner.base, *planner.subs], embeds)]


def max_diff(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(got, ref))


def test_keyframe_is_every_task_run_alone(make_micro_bundle, make_planner):
    planner = make_planner(make_micro_bundle(SUB_TASKS))
    embeds = frame_tokens(planner, 0)
    with torch.inference_mode():
        _, got = rows_for(planner).keyframe(embeds)
    assert max_diff(got, reference(planner, embeds)) <= TOL


@pytest.mark.parametrize("stacking", [True, False])
def test_frames_with_zero_thresholds_equal_a_full_recomputation(make_micro_bundle, make_planner, monkeypatch,
                                                                stacking):
    """Thresholds 0 propagate every changed row: each frame must equal running the
    blocks again in full, whether the layers run one GEMM with the shared ``W_0`` plus
    each ``dW_t`` (stacking) or one GEMM per task."""
    monkeypatch.setattr(lockstep, "choose_stacking", lambda *args, **kwargs: stacking)
    planner = make_planner(exact_thresholds(make_micro_bundle(SUB_TASKS)))
    rows = rows_for(planner)
    first = frame_tokens(planner, 0)
    second = moved(first, slice(1, 4), seed=1)
    third = moved(second, slice(5, 6), seed=2)
    with torch.inference_mode():
        state, _ = rows.keyframe(first)
        for embeds in (second, third):
            measured, drifts = [], []
            got = rows.frame(state, embeds, measured, drifts)
            assert max_diff(got, reference(planner, embeds)) <= TOL


def test_an_unchanged_frame_keeps_nothing_and_repeats_the_output(make_micro_bundle, make_planner):
    planner = make_planner(make_micro_bundle(SUB_TASKS))
    rows = rows_for(planner)
    embeds = frame_tokens(planner, 0)
    with torch.inference_mode():
        state, keyframe = rows.keyframe(embeds)
        keyframe = [k.clone() for k in keyframe]
        measured, drifts = [], []
        again = rows.frame(state, embeds, measured, drifts)
    assert max_diff(again, keyframe) == 0.0
    fractions = rows.kept_fractions(measured, state.rows_per_task)
    assert all(value == 0.0 for layers in fractions.values() for value in layers.values())


def test_thresholds_skip_small_changes_and_report_the_paths(make_micro_bundle, make_planner):
    """Real thresholds: a tiny change everywhere is skipped (nothing kept, output
    unchanged), and every thresholded layer is reported on the token path."""
    planner = make_planner(make_micro_bundle(SUB_TASKS))
    rows = rows_for(planner)
    embeds = frame_tokens(planner, 0)
    nudged = [e + 1e-6 for e in embeds]
    with torch.inference_mode():
        state, keyframe = rows.keyframe(embeds)
        keyframe = [k.clone() for k in keyframe]
        measured = []
        got = rows.frame(state, nudged, measured, [])
    assert max_diff(got, keyframe) <= TOL
    fractions = rows.kept_fractions(measured, state.rows_per_task)
    assert fractions and all(v == 0.0 for layers in fractions.values() for v in layers.values())
    assert {p for paths in rows.paths().values() for p in paths.values()} == {"token"}
