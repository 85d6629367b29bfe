"""The task registry: every built-in task carries every part, names are unique, and an
unknown name is one clear error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.tasks import registry
from mtlcompress.tasks.metrics import StreamingMetric
from mtlcompress.tasks.registry import LABEL_SUFFIXES, get_task, register_task, task_names

BUILT_IN = ("semseg", "parts", "depth", "normals", "edges", "saliency")
H, W = 6, 5


def _raw_label(spec) -> np.ndarray:
    """A file's contents as the dataset layer hands them to ``read_label``."""
    rng = np.random.default_rng(0)
    if spec.label_suffix == ".png":
        return rng.integers(0, 3 if spec.categorical else 256, (H, W)).astype(np.int64)
    channels = spec.out_channels()
    return rng.uniform(0.5, 2.0, (H, W) if channels == 1 else (H, W, channels)).astype(np.float32)


def test_the_built_in_tasks_are_registered_in_order():
    assert task_names() == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_task_has_all_parts_and_they_fit_together(name):
    spec = get_task(name)
    channels = spec.out_channels(4)
    assert spec.description and spec.loss_weight > 0 and spec.label_suffix in LABEL_SUFFIXES
    label = spec.read_label(_raw_label(spec), Path(f"{name}/x{spec.label_suffix}"))
    assert label.shape[:2] == (H, W)
    raw = torch.randn(2, channels, H, W)
    target = torch.from_numpy(label).long() if spec.categorical else \
        torch.from_numpy(label).float().reshape(H, W, -1).permute(2, 0, 1)
    target = target.expand(2, *target.shape)
    loss = spec.loss(raw, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    prediction = spec.predict(raw)
    assert prediction.shape == ((2, H, W) if spec.categorical else (2, channels, H, W))
    metric = spec.metric(4)
    assert isinstance(metric, StreamingMetric)
    metric.update(prediction, target)
    assert metric.primary in metric.compute()
    picture = spec.colormap(prediction[0].numpy())
    assert picture.dtype == np.uint8 and picture.shape[:2] == (H, W) and picture.ndim in (2, 3)


def test_output_decoding_of_the_built_in_tasks():
    raw = torch.tensor([[[[-2.0]], [[3.0]], [[0.5]]]])  # [1, 3, 1, 1]
    assert get_task("semseg").predict(raw).tolist() == [[[1]]]
    assert get_task("depth").predict(raw[:, :1]).item() == 0.0  # no negative depth
    assert torch.allclose(get_task("normals").predict(raw).norm(dim=1), torch.ones(1, 1, 1))
    assert get_task("edges").predict(raw[:, 1:2]).item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_registering_a_name_twice_is_refused_and_leaves_the_first(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    first = get_task("depth")
    with pytest.raises(ValueError, match="task 'depth' is registered twice"):
        register_task(replace(first, description="another depth"))
    assert get_task("depth") is first


def test_an_unknown_label_suffix_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="label_suffix must be one of .png, .npy"):
        register_task(replace(get_task("depth"), name="depth2", label_suffix=".tiff"))
    assert "depth2" not in task_names()


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(MtlCompressError, match="unknown task 'segmentation'; known tasks: semseg, parts, depth, "
                                               "normals, edges, saliency"):
        get_task("segmentation")


def test_categorical_tasks_take_their_channels_from_the_data():
    assert get_task("semseg").out_channels(21) == 21 and get_task("normals").out_channels(21) == 3
    with pytest.raises(MtlCompressError, match="needs the dataset's number of classes"):
        get_task("parts").out_channels(None)
