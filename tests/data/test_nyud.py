"""NYUD-v2 in the ATRC / InvPT NYUD_MT layout, on a tiny folder written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcompress.data.layouts import detect_layout, open_dataset
from mtlcompress.data.nyud import NyudDataset
from mtlcompress.errors import DataError

H, W = 12, 16
STEMS = {"train": ["0003", "0004"], "val": ["0001"]}


def write_nyud_mt(root: Path) -> Path:
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, stems in STEMS.items():
        for stem in stems:
            image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
            image.save(root / "images" / (f"{stem}.png" if stem == "0004" else f"{stem}.jpg"))
            stored = (np.arange(H * W).reshape(H, W) % 41).astype(np.uint8)  # 0 = void, 1..40 classes
            Image.fromarray(stored, mode="L").save(root / "segmentation" / f"{stem}.png")
            depth = rng.uniform(0.5, 9.0, (H, W)).astype(np.float32)
            depth[0, 0] = 0.0
            np.save(root / "depth" / f"{stem}.npy", depth)
            normals = np.zeros((H, W, 3), np.float32)
            normals[..., 2] = -2.0
            normals[0, :] = 0.0
            np.save(root / "normals" / f"{stem}.npy", normals)
            edge = np.zeros((H, W), np.float32)
            edge[4, :] = 1.0
            np.save(root / "edge" / f"{stem}.npy", edge)
        (root / "gt_sets" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


@pytest.fixture
def nyud(tmp_path: Path) -> Path:
    return write_nyud_mt(tmp_path / "NYUD_MT")


def test_tasks_classes_shapes_and_dtypes(nyud: Path) -> None:
    ds = NyudDataset(nyud, split="train")
    assert ds.available_tasks == ("semseg", "depth", "normals", "edges")
    assert ds.num_classes == {"semseg": 40}
    assert ds.class_names["semseg"][0] == "wall" and ds.class_names["semseg"][39] == "otherprop"
    assert ds.stems == ["0003", "0004"]
    sample = ds[1]  # a .png image
    assert sample["stem"] == "0004" and sample["image"].shape == (3, H, W)
    assert sample["semseg"].dtype == torch.int64 and sample["semseg"].shape == (H, W)
    assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, H, W)
    assert sample["normals"].dtype == torch.float32 and sample["normals"].shape == (3, H, W)
    assert sample["edges"].dtype == torch.float32 and sample["edges"].shape == (1, H, W)


def test_semseg_shifts_1_to_40_down_and_void_to_ignore(nyud: Path) -> None:
    semseg = NyudDataset(nyud, tasks=["semseg"])[0]["semseg"]
    stored = torch.arange(H * W).reshape(H, W) % 41
    assert torch.equal(semseg[stored == 0], torch.full_like(semseg[stored == 0], 255))
    assert torch.equal(semseg[stored > 0], stored[stored > 0] - 1)
    assert semseg[stored > 0].max() == 39


def test_depth_normals_and_edges_keep_their_encodings(nyud: Path) -> None:
    sample = NyudDataset(nyud, tasks=["depth", "normals", "edges"])[0]
    assert torch.allclose(sample["depth"][0], torch.from_numpy(np.load(nyud / "depth" / "0003.npy")))
    assert sample["depth"][0, 0, 0] == 0
    normals = sample["normals"]
    assert (normals[:, 0, :] == 0).all()  # zero vectors stay invalid
    assert torch.allclose(normals[:, 1:, :], torch.tensor([0.0, 0.0, -1.0])[:, None, None].expand(3, H - 1, W))
    assert sample["edges"][0, 4].eq(1).all() and sample["edges"].sum() == W


def test_semseg_value_above_40_is_refused(nyud: Path) -> None:
    stored = np.ones((H, W), np.uint8)
    stored[2, 2] = 41
    Image.fromarray(stored, mode="L").save(nyud / "segmentation" / "0003.png")
    with pytest.raises(DataError, match="has value 41.*1..40 with 0 = void"):
        NyudDataset(nyud, tasks=["semseg"])[0]


def test_missing_label_file_split_file_and_unknown_task(nyud: Path) -> None:
    (nyud / "normals" / "0004.npy").unlink()
    with pytest.raises(DataError, match=r"missing normals label file .*normals/0004\.npy"):
        NyudDataset(nyud)
    assert len(NyudDataset(nyud, tasks=["semseg"])) == 2
    with pytest.raises(DataError, match=r"gt_sets/test\.txt"):
        NyudDataset(nyud, split="test")
    with pytest.raises(DataError, match="'saliency' is not available.*semseg, depth, normals, edges"):
        NyudDataset(nyud, tasks=["saliency"])


def test_open_dataset_detects_nyud_and_resizes(nyud: Path) -> None:
    assert detect_layout(nyud) == "nyud"
    assert detect_layout(nyud.parent) == "nyud"
    ds = open_dataset(nyud, split="val", size=8)
    assert isinstance(ds, NyudDataset) and ds.stems == ["0001"]
    sample = ds[0]
    assert sample["image"].shape == (3, 8, 8) and sample["semseg"].shape == (8, 8)
    assert sample["depth"].shape == (1, 8, 8) and sample["normals"].shape == (3, 8, 8)
    assert set(sample["semseg"].unique().tolist()) <= set(range(40)) | {255}
    batch = next(iter(torch.utils.data.DataLoader(open_dataset(nyud, size=8), batch_size=2)))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["stem"] == ["0003", "0004"]


def test_invpt_png_edges_and_normals_decode_as_invpt(nyud: Path) -> None:
    # InvPT ships edges as 0/255 PNGs and normals as RGB PNGs (2 v / 255 - 1).
    for stem in ("0003", "0004"):
        (nyud / "edge" / f"{stem}.npy").unlink()
        (nyud / "normals" / f"{stem}.npy").unlink()
        edge = np.zeros((H, W), np.uint8)
        edge[:, 3] = 255
        edge[:, 5] = 127  # below one half
        Image.fromarray(edge, mode="L").save(nyud / "edge" / f"{stem}.png")
        normals = np.zeros((H, W, 3), np.uint8)
        normals[...] = (255, 128, 0)
        Image.fromarray(normals).save(nyud / "normals" / f"{stem}.png")
    sample = NyudDataset(nyud, split="train", tasks=["edges", "normals"])[0]
    expected_edges = np.zeros((H, W), np.float32)
    expected_edges[:, 3] = 1.0
    np.testing.assert_array_equal(sample["edges"][0].numpy(), expected_edges)
    decoded = np.array([1.0, 2 * 128 / 255 - 1, -1.0])
    np.testing.assert_allclose(sample["normals"][:, 2, 7].numpy(), decoded / np.linalg.norm(decoded), atol=1e-6)


def test_npy_labels_win_over_png_when_both_exist(nyud: Path) -> None:
    Image.fromarray(np.full((H, W), 255, np.uint8), mode="L").save(nyud / "edge" / "0003.png")
    edges = NyudDataset(nyud, split="train", tasks=["edges"])[0]["edges"]
    assert edges.sum() == W  # the .npy row 4, not the all-edge PNG
