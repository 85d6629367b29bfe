"""The task-domain executor on its own: all tasks' blocks stacked, given only the
engine's public per-layer state (``LayerPlanner``)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mtlcompress.runtime.layer_plan import LayerPlanner
from mtlcompress.runtime.task_domain import TaskDomainRows

from .conftest import exact_thresholds

SUB_TASKS = (("depth", 1), ("normals", 3), ("edge", 1))
TOL = 1e-4


def untimed(kind: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def forced_planner(paths: dict[str, str]) -> type[LayerPlanner]:
    """A planner that prices as usual, then sends each task down ``paths[task]``."""
    class Forced(LayerPlanner):
        def choose(self, task, name, *args, **kwargs):
            super().choose(task, name, *args, **kwargs)
            self.layer_paths[task.name][name] = paths[task.name]
            return paths[task.name]
    return Forced


def embeds_for(planner: LayerPlanner, batch: int = 2) -> list[torch.Tensor]:
    """Different tokens per task (as after their own embeddings)."""
    tokens = planner.base.backbone.patch_embed.num_patches + planner.base.backbone.num_prefix_tokens
    width = planner.base.backbone.embed_dim
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(batch, tokens, width, generator=gen) for _ in [planner.base, *planner.subs]]


def per_task_reference(planner: LayerPlanner, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [task.backbone.blocks(x) for task, x in zip([planner.base, *planner.subs], embeds)]


@pytest.mark.parametrize("paths", [("token", "token", "token"), ("dense", "dense", "dense"),
                                   ("element", "element", "element"), ("token", "dense", "element")])
def test_stacked_rows_equal_each_task_run_alone(make_micro_bundle, make_planner, paths):
    """With every threshold 0 the stacked path is exact on every path, mixed or not:
    each task gets its own rows, weights and weight delta back."""
    chosen = dict(zip([t for t, _ in SUB_TASKS], paths))
    planner = make_planner(exact_thresholds(make_micro_bundle(SUB_TASKS)), forced_planner(chosen))
    embeds = embeds_for(planner)
    measured: list = []
    with torch.inference_mode():
        got = TaskDomainRows(planner, untimed).run(embeds, measured)
    for out, ref in zip(got, per_task_reference(planner, embeds)):
        assert (out - ref).abs().max() <= TOL
    for task, path in chosen.items():
        assert set(planner.layer_paths[task].values()) == {path}
    # one (task, layer, mask, rows) per sub-task and thresholded layer, in run order
    assert len(measured) == len(SUB_TASKS) * len(planner.base.layers)
    assert {m[0] for m in measured} == set(chosen)


def test_the_planners_path_choice_is_what_runs(make_micro_bundle, make_planner):
    """The executor asks the planner once per sub-task and layer, records its answer,
    and the answer does not change the result (only the work)."""
    bundle = make_micro_bundle(SUB_TASKS)  # real thresholds: some rows skipped
    results = {}
    for path in ("dense", "token", "element"):
        planner = make_planner(bundle, forced_planner(dict.fromkeys([t for t, _ in SUB_TASKS], path)))
        with torch.inference_mode():
            results[path] = TaskDomainRows(planner, untimed).run(embeds_for(planner), [])
        assert {p for paths in planner.layer_paths.values() for p in paths.values()} == {path}
    for path in ("token", "element"):
        for a, b in zip(results[path], results["dense"]):
            assert (a - b).abs().max() <= TOL


def test_base_rows_are_untouched_by_sub_task_deltas(make_micro_bundle, make_planner):
    planner = make_planner(make_micro_bundle(SUB_TASKS))
    embeds = embeds_for(planner)
    with torch.inference_mode():
        base_out = TaskDomainRows(planner, untimed).run(embeds, [])[0]
    assert torch.allclose(base_out, per_task_reference(planner, embeds)[0], atol=TOL)
