"""Flips, distillation losses and constant baselines come from each task's registry
entry, so training, sparsify and evaluation need no task names."""

from __future__ import annotations

import math

import pytest
import torch

from mtlcompress.tasks import behaviour
from mtlcompress.tasks.registry import get_task, task_names
from mtlcompress.training.augment import random_hflip


def test_flip_vectors_mirrors_the_map_and_turns_x():
    maps = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 3)
    flipped = behaviour.flip_vectors(maps.clone())
    assert torch.equal(flipped[:, 0], -maps[:, 0].flip(-1))
    assert torch.equal(flipped[:, 1:], maps[:, 1:].flip(-1))


def test_random_hflip_flips_every_task_as_its_entry_says():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(4, 3, 2, 5)
    normals = torch.rand(4, 3, 2, 5)
    depth = torch.rand(4, 1, 2, 5)
    semseg = torch.randint(0, 3, (4, 2, 5))
    batch = {"image": image, "normals": normals, "depth": depth, "semseg": semseg, "index": torch.arange(4)}
    out = random_hflip(batch, gen, p=1.0)
    assert torch.equal(out["image"], image.flip(-1))
    assert torch.equal(out["depth"], depth.flip(-1))
    assert torch.equal(out["semseg"], semseg.flip(-1))
    assert torch.equal(out["normals"][:, 0], -normals[:, 0].flip(-1))
    assert torch.equal(out["normals"][:, 1:], normals[:, 1:].flip(-1))
    assert torch.equal(out["index"], batch["index"])  # not a map: untouched
    assert torch.equal(batch["image"], image)  # the input batch is not modified


def test_random_hflip_leaves_unflipped_samples_alone():
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(64, 3, 2, 4), "normals": torch.rand(64, 3, 2, 4)}
    out = random_hflip(batch, gen, p=0.5)
    changed = (out["image"] != batch["image"]).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64
    assert torch.equal(out["normals"][~changed], batch["normals"][~changed])


@pytest.mark.parametrize("name", task_names())
def test_distillation_is_smallest_at_the_teacher(name):
    spec = get_task(name)
    gen = torch.Generator().manual_seed(1)
    channels = spec.out_channels(5)
    teacher = torch.randn(2, channels, 4, 4, generator=gen)
    other = teacher + torch.randn(teacher.shape, generator=gen)
    at_teacher, elsewhere = spec.distill(teacher, teacher), spec.distill(other, teacher)
    assert at_teacher.dim() == 0 and elsewhere.dim() == 0
    assert float(at_teacher) < float(elsewhere)


def test_majority_class_ignores_the_ignore_label():
    targets = [torch.tensor([[255, 255, 255, 1]]), torch.tensor([[2, 2, 255, 255]])]
    raw = behaviour.majority_class(iter(targets), 3)
    assert raw.tolist() == [-10.0, -10.0, 10.0]


def test_mean_positive_value_skips_missing_depth():
    targets = [torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[4.0, 0.0]]])]
    assert behaviour.mean_positive_value(iter(targets), None).tolist() == [3.0]
    assert behaviour.mean_value(iter(targets), None).tolist() == [1.5]


def test_positive_rate_is_a_logit_and_clamped():
    targets = [torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])]
    assert behaviour.positive_rate_logit(iter(targets), None).item() == pytest.approx(math.log(0.25 / 0.75))
    assert behaviour.positive_rate_logit(iter([torch.zeros(1, 1, 4)]), None).item() == pytest.approx(
        math.log(1e-4 / (1 - 1e-4)), rel=1e-4)


def test_mean_direction_is_a_unit_vector():
    targets = [torch.tensor([3.0, 0.0, 4.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)]
    raw = behaviour.mean_direction(iter(targets), None)
    assert torch.allclose(raw, torch.tensor([0.6, 0.0, 0.8]))
