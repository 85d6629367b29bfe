"""Adding a task takes one ``register_task`` call: a toy 1-channel "brightness" task,
with its own loss, metric, label reader, output decoding and colour map, is read from a
scenes folder, trained, evaluated and drawn through the normal code paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mtlcompress.data.layouts import open_dataset
from mtlcompress.errors import DataError
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.report.media import save_predictions
from mtlcompress.tasks import registry
from mtlcompress.tasks.metrics import StreamingMetric
from mtlcompress.tasks.registry import TaskSpec, register_task
from mtlcompress.training.loop import TrainConfig
from mtlcompress.training.single_task import train_single_task

SIZE = 32  # the micro backbone's image size


class MeanAbsoluteError(StreamingMetric):
    primary = "mae"
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self._add_state("sums", (2,), torch.float64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        self.sums += torch.stack([(prediction - target).abs().sum().double(), torch.tensor(target.numel())])

    def compute(self) -> dict[str, float]:
        total, count = self.sums.tolist()
        return {"mae": total / count}


def read_brightness(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim != 2 or not ((raw >= 0) & (raw <= 1)).all():
        raise DataError(f"brightness file {path} must be an [H,W] map in [0,1]")
    return raw.astype(np.float32)


def red_ramp(prediction: np.ndarray) -> np.ndarray:
    red = np.round(np.clip(prediction[0], 0, 1) * 255).astype(np.uint8)
    return np.stack([red, np.zeros_like(red), np.zeros_like(red)], axis=-1)


@pytest.fixture
def brightness(monkeypatch) -> TaskSpec:
    """The toy task, registered for this test only."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return register_task(TaskSpec(
        name="brightness", description="mean image brightness per pixel (MAE)", categorical=False, channels=1,
        loss=lambda raw, target: F.mse_loss(torch.sigmoid(raw), target), metric=lambda _: MeanAbsoluteError(),
        loss_weight=1.0, label_suffix=".npy", read_label=read_brightness, decode=torch.sigmoid, colormap=red_ramp,
    ))


def _brightness_scenes(root: Path) -> Path:
    for folder in ("images", "brightness", "splits"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        np.save(root / "brightness" / f"{i}.npy", image.mean(axis=2).astype(np.float32) / 255)
    (root / "splits" / "train.txt").write_text("0\n1\n2\n3\n")
    (root / "splits" / "val.txt").write_text("4\n5\n")
    return root


def test_a_toy_task_is_read_trained_evaluated_and_drawn(tmp_path, brightness):
    data = _brightness_scenes(tmp_path / "data")
    sample = open_dataset(data, split="val")[0]
    assert open_dataset(data).tasks == ("brightness",)
    assert sample["brightness"].shape == (1, SIZE, SIZE) and sample["brightness"].dtype == torch.float32

    config = TrainConfig(steps=2, batch_size=2, warmup_steps=1, eval_every=2, checkpoint_every=2, augment=False)
    info = train_single_task(task="brightness", data=data, out=tmp_path / "b.safetensors", backbone="micro",
                             config=config, show_progress=False)
    assert set(info.metrics) == {"mae"} and 0 <= info.metrics["mae"] < 1

    model, loaded = load_checkpoint(tmp_path / "b.safetensors")
    assert loaded.task == "brightness" and loaded.out_channels == 1
    with torch.no_grad():
        raw = model(sample["image"].unsqueeze(0))[0]
    written = save_predictions(tmp_path / "out", {"brightness": raw})
    picture = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(picture, red_ramp(torch.sigmoid(raw).numpy()))


def test_a_toy_task_in_a_manifest_and_its_label_checks(tmp_path, brightness):
    data = _brightness_scenes(tmp_path / "data")
    (data / "manifest.json").write_text(json.dumps({"format": "mtlcompress.scenes", "version": 1,
                                                    "tasks": ["brightness"]}))
    np.save(data / "brightness" / "1.npy", np.full((SIZE, SIZE), 2.0, np.float32))
    dataset = open_dataset(data)
    with pytest.raises(DataError, match=r"brightness file .*1.npy must be an \[H,W\] map in \[0,1\]"):
        dataset[1]
