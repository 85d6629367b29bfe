"""PASCAL-Context in the ATRC / InvPT PASCAL_MT layout, on a tiny folder written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mtlcompress.data.layouts import detect_layout, open_dataset
from mtlcompress.data.pascal_context import PascalContextDataset, label_map_edges, thin
from mtlcompress.errors import DataError

H, W = 12, 16
WITH_PERSON, DOG_ONLY, PERSON_NO_PARTS = "2008_000001", "2008_000002", "2008_000003"
WALL, SKY = 440, 360  # PASCAL-Context ids: "wall" also exists in NYUD, "sky" does not
NORMAL_RGB = (255, 128, 0)


def _box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[rows, cols] = 1
    return mask


def _anno(objects: list[tuple[str, int, np.ndarray, list[tuple[str, np.ndarray]]]]) -> dict:
    """A PASCAL-Part ``anno`` struct as MATLAB stores it (objects: class, class_ind, mask, parts)."""
    table = np.zeros((1, len(objects)), dtype=[("class", object), ("class_ind", object),
                                               ("mask", object), ("parts", object)])
    for i, (name, class_ind, mask, parts) in enumerate(objects):
        part_table: np.ndarray = np.zeros((0, 0))
        if parts:
            part_table = np.zeros((1, len(parts)), dtype=[("part_name", object), ("mask", object)])
            for j, part in enumerate(parts):
                part_table[0, j] = part
        table[0, i] = (name, np.array([[class_ind]], np.uint8), mask, part_table)
    anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = ("image", table)
    return {"anno": anno}


def write_pascal_mt(root: Path) -> Path:
    for folder in ("JPEGImages", "semseg/pascal-context", "semseg/VOC12", "human_parts", "normals_distill",
                   "sal_distill", "pascal-context/trainval", "ImageSets/Context"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    person = _box(slice(0, 12), slice(0, 8))
    parts = {
        WITH_PERSON: [
            ("person", 15, person, [("hair", _box(slice(0, 3), slice(0, 4))), ("luarm", _box(slice(3, 6), slice(0, 4))),
                                    ("torso", _box(slice(3, 9), slice(4, 8))), ("rfoot", _box(slice(9, 12), slice(0, 4)))]),
            ("dog", 12, _box(slice(0, 3), slice(12, 16)), [("head", _box(slice(0, 3), slice(12, 16)))]),
        ],
        DOG_ONLY: [("dog", 12, _box(slice(0, 3), slice(12, 16)), [("head", _box(slice(0, 3), slice(12, 16)))])],
        PERSON_NO_PARTS: [("person", 15, person, [])],
    }
    for stem in (WITH_PERSON, DOG_ONLY, PERSON_NO_PARTS):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        semseg = (np.arange(H * W).reshape(H, W) % 21).astype(np.uint8)
        semseg[0, :] = 255
        Image.fromarray(semseg, mode="L").save(root / "semseg" / "pascal-context" / f"{stem}.png")
        scipy.io.savemat(root / "human_parts" / f"{stem}.mat", _anno(parts[stem]))
        label_map = np.full((H, W), SKY, np.uint16)
        label_map[:, : W // 2] = WALL
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{stem}.mat", {"LabelMap": label_map})
        Image.fromarray(np.full((H, W, 3), NORMAL_RGB, np.uint8)).save(root / "normals_distill" / f"{stem}.png")
        saliency = np.tile(np.array([0, 127, 128, 255], np.uint8), (H, W // 4))
        Image.fromarray(saliency, mode="L").save(root / "sal_distill" / f"{stem}.png")
    # VOC12 labels exist for a subset of images and win over the pascal-context ones.
    Image.fromarray(np.full((H, W), 15, np.uint8), mode="L").save(root / "semseg" / "VOC12" / f"{WITH_PERSON}.png")
    (root / "ImageSets" / "Context" / "train.txt").write_text(f"{WITH_PERSON}\n{DOG_ONLY}\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text(f"{PERSON_NO_PARTS}\n")
    return root


@pytest.fixture
def pascal(tmp_path: Path) -> Path:
    return write_pascal_mt(tmp_path / "PASCAL_MT")


def test_tasks_classes_shapes_and_dtypes(pascal: Path) -> None:
    ds = PascalContextDataset(pascal, split="train")
    assert ds.available_tasks == ("semseg", "parts", "normals", "edges", "saliency")
    assert ds.num_classes == {"semseg": 21, "parts": 7}
    assert ds.class_names["semseg"][15] == "person" and ds.class_names["parts"][2] == "torso"
    assert ds.stems == [WITH_PERSON, DOG_ONLY]
    sample = ds[1]
    assert sample["stem"] == DOG_ONLY
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
    assert sample["semseg"].dtype == torch.int64 and sample["parts"].dtype == torch.int64
    assert sample["normals"].shape == (3, H, W)
    assert sample["edges"].shape == (1, H, W) and sample["saliency"].shape == (1, H, W)


def test_semseg_keeps_voc_ids_and_ignore_and_prefers_voc12_files(pascal: Path) -> None:
    ds = PascalContextDataset(pascal, split="train", tasks=["semseg"])
    context = ds[1]["semseg"]
    assert (context[0] == 255).all()
    expected = torch.arange(H * W).reshape(H, W) % 21
    assert torch.equal(context[1:], expected[1:])
    assert (ds[0]["semseg"] == 15).all()  # from semseg/VOC12


def test_semseg_id_beyond_the_21_voc_classes_is_refused(pascal: Path) -> None:
    label = np.zeros((H, W), np.uint8)
    label[5, 5] = 21
    Image.fromarray(label, mode="L").save(pascal / "semseg" / "pascal-context" / f"{DOG_ONLY}.png")
    with pytest.raises(DataError, match=r"class id 21, outside 0\.\.20"):
        PascalContextDataset(pascal, tasks=["semseg"])[1]


def test_human_parts_group_into_six_classes_and_ignore_images_without_parts(pascal: Path) -> None:
    train = PascalContextDataset(pascal, split="train", tasks=["parts", "semseg"])
    parts = train[0]["parts"]
    assert (parts[0:3, 0:4] == 1).all()  # hair -> head
    assert (parts[3:6, 0:4] == 3).all()  # luarm -> upper arm
    assert (parts[3:9, 4:8] == 2).all()  # torso
    assert (parts[9:12, 0:4] == 6).all()  # rfoot -> lower leg
    assert (parts[:, 8:] == 0).all()  # the dog's "head" part is not a person part
    assert (train[1]["parts"] == 255).all()  # no person at all
    val = PascalContextDataset(pascal, split="val", tasks=["parts", "edges"])
    assert (val[0]["parts"] == 255).all()  # a person without part annotations


def test_parts_only_drops_images_without_a_person(pascal: Path) -> None:
    assert PascalContextDataset(pascal, split="train", tasks=["parts"]).stems == [WITH_PERSON]
    # As in the references, a person object counts even without part annotations.
    assert PascalContextDataset(pascal, split="val", tasks=["parts"]).stems == [PERSON_NO_PARTS]
    (pascal / "ImageSets" / "Context" / "dogs.txt").write_text(f"{DOG_ONLY}\n")
    with pytest.raises(DataError, match="shows a person"):
        PascalContextDataset(pascal, split="dogs", tasks=["parts"])
    # The ImageSets/Parts cache of the references is trusted when it covers the split.
    (pascal / "ImageSets" / "Parts").mkdir(parents=True)
    (pascal / "ImageSets" / "Parts" / "train.txt").write_text(json.dumps({WITH_PERSON: [12], DOG_ONLY: [15]}))
    assert PascalContextDataset(pascal, split="train", tasks=["parts"]).stems == [DOG_ONLY]


def test_normals_decode_2v_over_255_minus_1_only_on_classes_nyud_knows(pascal: Path) -> None:
    normals = PascalContextDataset(pascal, tasks=["normals"])[0]["normals"]
    decoded = 2 * torch.tensor(NORMAL_RGB, dtype=torch.float32) / 255 - 1
    expected = decoded / decoded.norm()
    assert torch.allclose(normals[:, :, : W // 2], expected[:, None, None].expand(3, H, W // 2), atol=1e-6)
    assert (normals[:, :, W // 2:] == 0).all()  # "sky" pixels: invalid


def test_saliency_is_thresholded_at_half(pascal: Path) -> None:
    saliency = PascalContextDataset(pascal, tasks=["saliency"])[0]["saliency"][0]
    assert saliency[:, 0:4].tolist() == [[0.0, 0.0, 1.0, 1.0]] * H  # stored 0, 127, 128, 255


def test_edges_are_the_thinned_label_map_boundary(pascal: Path) -> None:
    edges = PascalContextDataset(pascal, tasks=["edges"])[0]["edges"][0]
    columns = set(torch.nonzero(edges)[:, 1].tolist())
    assert columns <= {W // 2 - 1, W // 2}  # both sides of the wall/sky boundary are candidates
    assert (edges[1:].sum(dim=1) == 1).all()  # thinned to one pixel per row (the end row may go)
    assert label_map_edges(np.full((H, W), WALL)).sum() == 0


def test_laplacian_edge_rule_matches_the_reference_quirk() -> None:
    label_map = np.zeros((5, 7), np.int64)
    label_map[:, 3] = 1  # a 1-pixel stripe between two 0 regions: a 3-pixel Laplacian band
    edges = label_map_edges(label_map)
    assert edges[1:4, 3].all() and edges.sum() == 3  # thinned to its centre line
    cancel = np.array([[2, 2, 2], [1, 2, 3], [2, 2, 2]])
    assert label_map_edges(cancel)[1, 1] == 0  # 1 + 3 - 2 * 2 = 0: not an edge, as in OpenCV's Laplacian


def test_thin_reduces_a_thick_bar_to_a_connected_line() -> None:
    bar = np.zeros((9, 14), bool)
    bar[3:6, 2:12] = True
    line = thin(bar)
    assert line.sum() >= 8 and (line & ~bar).sum() == 0
    assert (line.sum(axis=0) <= 1).all()  # one pixel thick
    assert np.array_equal(thin(line), line)  # already thin: unchanged
    dot = np.zeros((3, 3), bool)
    dot[1, 1] = True
    assert np.array_equal(thin(dot), dot)


def test_missing_label_file_is_named(pascal: Path) -> None:
    (pascal / "sal_distill" / f"{DOG_ONLY}.png").unlink()
    with pytest.raises(DataError, match=rf"missing saliency label file .*sal_distill/{DOG_ONLY}\.png"):
        PascalContextDataset(pascal, split="train")
    assert len(PascalContextDataset(pascal, split="train", tasks=["semseg", "edges"])) == 2


def test_missing_split_file_and_unknown_task(pascal: Path) -> None:
    with pytest.raises(DataError, match=r"ImageSets/Context/test\.txt"):
        PascalContextDataset(pascal, split="test")
    with pytest.raises(DataError, match="'depth' is not available.*semseg, parts, normals, edges, saliency"):
        PascalContextDataset(pascal, tasks=["depth"])


def test_not_a_part_annotation_is_refused(pascal: Path) -> None:
    scipy.io.savemat(pascal / "human_parts" / f"{WITH_PERSON}.mat", {"something": np.zeros(3)})
    with pytest.raises(DataError, match="not a PASCAL-Part annotation"):
        PascalContextDataset(pascal, tasks=["parts", "semseg"])[0]


def test_open_dataset_detects_pascal_also_from_its_parent(pascal: Path) -> None:
    assert detect_layout(pascal) == "pascal_context"
    ds = open_dataset(pascal.parent, split="val", tasks=["semseg", "normals"], size=8)
    assert isinstance(ds, PascalContextDataset) and ds.root == pascal
    sample = ds[0]
    assert sample["semseg"].shape == (8, 8) and sample["normals"].shape == (3, 8, 8)
    assert sample["image"].shape == (3, 8, 8)
