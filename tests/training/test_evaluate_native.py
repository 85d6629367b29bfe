"""Evaluation by the references' protocol: tiny PASCAL-Context and NYUD-v2 (InvPT PNG
layout) folders with images of different, non-square sizes, evaluated at each label's
native size while the model sees 8x8 inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mtlcompress.data.layouts import open_dataset
from mtlcompress.data.nyud import NyudDataset
from mtlcompress.data.pascal_context import PascalContextDataset
from mtlcompress.data.scenes import ScenesDataset
from mtlcompress.data.synth import generate_scenes
from mtlcompress.tasks.registry import get_task
from mtlcompress.training.evaluate import evaluate_predictor, evaluation_protocol

SIZES = {"a": (10, 14), "b": (13, 9)}  # stem -> (H, W), neither square nor 8x8
MODEL_SIZE = 8


def _image(rng: np.random.Generator, shape: tuple[int, int]) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))


def write_pascal(root: Path) -> Path:
    for folder in ("JPEGImages", "semseg/VOC12", "sal_distill", "pascal-context/trainval", "ImageSets/Context"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, (h, w) in SIZES.items():
        _image(rng, (h, w)).save(root / "JPEGImages" / f"{stem}.jpg")
        semseg = np.zeros((h, w), np.uint8)
        semseg[: h // 3] = 255
        semseg[:, w // 2:] = 15
        Image.fromarray(semseg, mode="L").save(root / "semseg" / "VOC12" / f"{stem}.png")
        Image.fromarray(np.where(semseg == 15, 255, 0).astype(np.uint8), mode="L").save(
            root / "sal_distill" / f"{stem}.png")
        label_map = np.full((h, w), 5, np.uint16)
        label_map[:, w // 3:] = 9
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{stem}.mat", {"LabelMap": label_map})
    (root / "ImageSets" / "Context" / "val.txt").write_text("a\nb\n")
    return root


def write_nyud_invpt(root: Path) -> Path:
    """InvPT's NYUD layout: PNG images, edges and normals; depth .npy."""
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for stem, (h, w) in SIZES.items():
        _image(rng, (h, w)).save(root / "images" / f"{stem}.png")
        Image.fromarray((np.arange(h * w).reshape(h, w) % 5).astype(np.uint8), mode="L").save(
            root / "segmentation" / f"{stem}.png")
        depth = rng.uniform(1.0, 5.0, (h, w)).astype(np.float32)
        depth[0] = 0.0  # no measurement
        np.save(root / "depth" / f"{stem}.npy", depth)
        Image.fromarray(np.full((h, w, 3), (128, 128, 255), np.uint8)).save(root / "normals" / f"{stem}.png")
        edge = np.zeros((h, w), np.uint8)
        edge[h // 2, 1:-1] = 255
        Image.fromarray(edge, mode="L").save(root / "edge" / f"{stem}.png")
    (root / "gt_sets" / "val.txt").write_text("a\nb\n")
    return root


@pytest.fixture
def pascal(tmp_path: Path) -> Path:
    return write_pascal(tmp_path / "PASCAL_MT")


@pytest.fixture
def nyud(tmp_path: Path) -> Path:
    return write_nyud_invpt(tmp_path / "NYUD_MT")


def _native_oracle(dataset, task: str, to_raw):
    """A predictor (batch size 1) whose raw output, at native size, is the label itself."""
    labels = iter([dataset[i]["native"][task] for i in range(len(dataset))])
    return lambda images: to_raw(next(labels)).unsqueeze(0)


@pytest.mark.parametrize("root_fixture", ["pascal", "nyud"])
def test_samples_carry_labels_at_their_image_size(root_fixture: str, request) -> None:
    dataset = open_dataset(request.getfixturevalue(root_fixture), "val", size=MODEL_SIZE, native_labels=True)
    for index, (h, w) in enumerate(SIZES.values()):
        sample = dataset[index]
        assert sample["image"].shape == (3, MODEL_SIZE, MODEL_SIZE)
        assert sample["semseg"].shape == (MODEL_SIZE, MODEL_SIZE)
        for task, label in sample["native"].items():
            assert label.shape[-2:] == (h, w), task
    assert "native" not in open_dataset(request.getfixturevalue(root_fixture), "val", size=MODEL_SIZE)[0]


@pytest.mark.parametrize("root_fixture", ["pascal", "nyud"])
def test_native_oracle_scores_perfectly_on_the_reference_metrics(root_fixture: str, request) -> None:
    dataset = open_dataset(request.getfixturevalue(root_fixture), "val", tasks=["semseg", "edges"],
                           size=MODEL_SIZE, native_labels=True)
    semseg = evaluate_predictor(
        _native_oracle(dataset, "semseg", lambda label: torch.nn.functional.one_hot(
            label.clamp(max=dataset.num_classes["semseg"] - 1), dataset.num_classes["semseg"]).permute(2, 0, 1).float()),
        dataset, get_task("semseg"), dataset.num_classes["semseg"], batch_size=1)
    assert semseg["miou"] == pytest.approx(100.0) and semseg["pixel_acc"] == pytest.approx(100.0)
    edges = evaluate_predictor(_native_oracle(dataset, "edges", lambda label: 20 * label - 10),
                               dataset, get_task("edges"), None, batch_size=1)
    assert edges["odsF"] == pytest.approx(100.0)


def test_outputs_are_resized_to_each_native_label(nyud: Path) -> None:
    # Per-image constant depth (the mean of the 8x8 input): RMSE by hand over the
    # native valid pixels of both images, batched together despite their sizes.
    dataset = open_dataset(nyud, "val", tasks=["depth"], size=MODEL_SIZE, native_labels=True)

    def predict(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 1, MODEL_SIZE, MODEL_SIZE) * 4

    errors = []
    for index in range(len(dataset)):
        sample = dataset[index]
        depth = sample["native"]["depth"]
        valid = depth > 0
        errors.append((sample["image"].mean() * 4 - depth[valid]).double())
    expected = torch.cat(errors).square().mean().sqrt().item()
    resized_only = open_dataset(nyud, "val", tasks=["depth"], size=MODEL_SIZE)
    native = evaluate_predictor(predict, dataset, get_task("depth"), None, batch_size=2)
    assert native["rmse"] == pytest.approx(expected, rel=1e-6)
    assert evaluate_predictor(predict, resized_only, get_task("depth"), None)["rmse"] != pytest.approx(expected)


def test_protocol_names_the_reference_settings(pascal: Path, nyud: Path) -> None:
    edges, saliency = get_task("edges"), get_task("saliency")
    pascal_native = open_dataset(pascal, "val", size=MODEL_SIZE, native_labels=True)
    assert "0.0075" in evaluation_protocol(edges, pascal_native, None)
    assert "native" in evaluation_protocol(edges, pascal_native, None)
    assert "ATRC/InvPT thresholds" in evaluation_protocol(saliency, pascal_native, None)
    nyud_resized = open_dataset(nyud, "val", size=MODEL_SIZE)
    assert "0.011" in evaluation_protocol(edges, nyud_resized, None)
    assert "input size" in evaluation_protocol(edges, nyud_resized, None)


def test_reference_datasets_ask_for_the_reference_losses() -> None:
    assert PascalContextDataset.loss_options == {"edges": {"pos_weight": 0.95}, "saliency": {"balanced": True}}
    assert NyudDataset.loss_options == {"edges": {"pos_weight": 0.8}}
    assert ScenesDataset.loss_options == {} and ScenesDataset.metric_options == {}


def test_synthetic_scenes_score_the_same_natively(tmp_path: Path) -> None:
    # Scenes labels are already at model size, so the protocol change moves no number.
    generate_scenes(tmp_path, images=5, size=32, val_fraction=0.4)
    plain = open_dataset(tmp_path, "val", tasks=["semseg", "depth", "edges"], size=32)
    native = open_dataset(tmp_path, "val", tasks=["semseg", "depth", "edges"], size=32, native_labels=True)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    for task, channels in (("semseg", None), ("depth", 1), ("edges", 1)):
        num_classes = plain.num_classes.get(task)
        outputs = channels or num_classes

        def predict(images: torch.Tensor, outputs: int = outputs) -> torch.Tensor:
            raw = conv(images)
            return raw[:, :outputs] if outputs <= 4 else raw.repeat(1, outputs // 4 + 1, 1, 1)[:, :outputs]

        spec = get_task(task)
        # per-image updates pool in another order: equal up to float64 rounding
        assert evaluate_predictor(predict, native, spec, num_classes) == pytest.approx(
            evaluate_predictor(predict, plain, spec, num_classes), rel=1e-12)
