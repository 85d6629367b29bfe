"""The scenes layout, the shared sample conventions, layout detection and video clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcompress.data.layouts import detect_layout, list_video_clips, open_clip, open_dataset
from mtlcompress.data.scenes import ScenesDataset
from mtlcompress.errors import DataError

H, W = 12, 16
CLASS_NAMES = ["sky", "road", "car", "tree", "wall"]
PART_NAMES = ["background", "wheel", "door"]
ALL_TASKS = ["semseg", "parts", "depth", "normals", "edges", "saliency"]


def _write_frame(root: Path, stem: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    semseg = rng.integers(0, len(CLASS_NAMES), (H, W)).astype(np.uint8)
    semseg[0, :4] = 255
    Image.fromarray(semseg, mode="L").save(root / "semseg" / f"{stem}.png")
    parts = rng.integers(0, len(PART_NAMES), (H, W)).astype(np.uint8)
    Image.fromarray(parts, mode="L").save(root / "parts" / f"{stem}.png")
    depth = rng.uniform(0.5, 10.0, (H, W)).astype(np.float32)
    depth[-1, -1] = 0.0
    np.save(root / "depth" / f"{stem}.npy", depth)
    normals = rng.normal(size=(H, W, 3)).astype(np.float32) * 3.0  # not unit on purpose
    normals[1, 1] = 0.0
    np.save(root / "normals" / f"{stem}.npy", normals)
    edges = np.zeros((H, W), np.uint8)
    edges[:, W // 2] = 255
    Image.fromarray(edges, mode="L").save(root / "edges" / f"{stem}.png")
    saliency = np.zeros((H, W), np.uint8)
    saliency[H // 2:, :] = 255
    Image.fromarray(saliency, mode="L").save(root / "saliency" / f"{stem}.png")


def write_scenes(root: Path, stems_by_split: dict[str, list[str]], manifest: bool = True) -> Path:
    """A scenes-layout folder in the exact format the synthetic generator writes."""
    for folder in ["images", "splits", *ALL_TASKS]:
        (root / folder).mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, stems in stems_by_split.items():
        for stem in stems:
            _write_frame(root, stem, seed)
            seed += 1
        (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    if manifest:
        (root / "manifest.json").write_text(json.dumps({
            "format": "mtlcompress.scenes", "version": 1, "tasks": ALL_TASKS,
            "class_names": CLASS_NAMES, "num_classes": len(CLASS_NAMES),
            "parts_class_names": PART_NAMES,
        }))
    return root


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    return write_scenes(tmp_path / "scenes", {"train": ["s0", "s1", "s2"], "val": ["s3"]})


def test_sample_has_documented_dtypes_shapes_and_values(scenes: Path) -> None:
    ds = ScenesDataset(scenes, split="train")
    assert len(ds) == 3 and ds.stems == ["s0", "s1", "s2"]
    assert ds.tasks == tuple(ALL_TASKS) and ds.available_tasks == tuple(ALL_TASKS)
    assert ds.num_classes == {"semseg": 5, "parts": 3}
    assert ds.class_names["semseg"] == CLASS_NAMES
    sample = ds[1]
    assert sample["stem"] == "s1"

    image = sample["image"]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    stored = np.array(Image.open(scenes / "images" / "s1.png"))
    assert torch.allclose(image, torch.from_numpy(stored).permute(2, 0, 1).float() / 255)

    semseg = sample["semseg"]
    assert semseg.dtype == torch.int64 and semseg.shape == (H, W)
    assert torch.equal(semseg, torch.from_numpy(np.asarray(Image.open(scenes / "semseg" / "s1.png")).astype(np.int64)))
    assert (semseg[0, :4] == 255).all()
    assert sample["parts"].dtype == torch.int64 and sample["parts"].shape == (H, W)

    depth = sample["depth"]
    assert depth.dtype == torch.float32 and depth.shape == (1, H, W)
    assert torch.allclose(depth[0], torch.from_numpy(np.load(scenes / "depth" / "s1.npy")))
    assert depth[0, -1, -1] == 0

    normals = sample["normals"]
    assert normals.dtype == torch.float32 and normals.shape == (3, H, W)
    lengths = normals.norm(dim=0)
    assert lengths[1, 1] == 0 and (normals[:, 1, 1] == 0).all()
    lengths[1, 1] = 1
    assert torch.allclose(lengths, torch.ones_like(lengths), atol=1e-5)

    for task in ("edges", "saliency"):
        assert sample[task].dtype == torch.float32 and sample[task].shape == (1, H, W)
        assert set(sample[task].unique().tolist()) == {0.0, 1.0}
    assert (sample["edges"][0, :, W // 2] == 1).all() and sample["edges"].sum() == H
    assert (sample["saliency"][0, H // 2:] == 1).all() and sample["saliency"][0, : H // 2].sum() == 0


def test_default_collate_batches_samples(scenes: Path) -> None:
    loader = torch.utils.data.DataLoader(ScenesDataset(scenes), batch_size=2)
    batch = next(iter(loader))
    assert batch["stem"] == ["s0", "s1"]
    assert batch["image"].shape == (2, 3, H, W)
    assert batch["semseg"].shape == (2, H, W) and batch["normals"].shape == (2, 3, H, W)


def test_size_resizes_image_bilinear_and_labels_nearest(scenes: Path) -> None:
    plain, small = ScenesDataset(scenes)[0], ScenesDataset(scenes, size=8)[0]
    assert small["image"].shape == (3, 8, 8)
    assert 0 <= small["image"].min() and small["image"].max() <= 1
    assert small["semseg"].shape == (8, 8) and small["semseg"].dtype == torch.int64
    assert set(small["semseg"].unique().tolist()) <= set(plain["semseg"].unique().tolist())
    for task in ("depth", "edges", "saliency"):
        assert small[task].shape == (1, 8, 8)
    assert set(small["edges"].unique().tolist()) <= {0.0, 1.0}
    lengths = small["normals"].norm(dim=0)
    assert torch.all(((lengths - 1).abs() < 1e-5) | (lengths == 0))
    upscaled = ScenesDataset(scenes, size=32)[0]
    assert upscaled["image"].shape == (3, 32, 32) and upscaled["parts"].shape == (32, 32)


def test_tasks_selects_labels_in_given_order(scenes: Path) -> None:
    ds = ScenesDataset(scenes, tasks=["depth", "semseg"])
    assert ds.tasks == ("depth", "semseg")
    assert set(ds[0]) == {"image", "stem", "depth", "semseg"}
    assert set(ScenesDataset(scenes, tasks=[])[0]) == {"image", "stem"}


def test_unknown_task_lists_the_available_ones(scenes: Path) -> None:
    with pytest.raises(DataError, match="'segm'.*available tasks are semseg, parts, depth"):
        ScenesDataset(scenes, tasks=["segm"])


def test_manifest_limits_tasks_and_folder_of_listed_task_must_exist(scenes: Path) -> None:
    manifest = json.loads((scenes / "manifest.json").read_text())
    manifest["tasks"] = ["semseg", "depth"]
    (scenes / "manifest.json").write_text(json.dumps(manifest))
    assert ScenesDataset(scenes).available_tasks == ("semseg", "depth")
    with pytest.raises(DataError, match="'normals' is not available"):
        ScenesDataset(scenes, tasks=["normals"])
    (scenes / "depth" / "s0.npy").rename(scenes / "s0.npy")
    for path in (scenes / "depth").iterdir():
        path.unlink()
    (scenes / "depth").rmdir()
    with pytest.raises(DataError, match="depth.*does not exist"):
        ScenesDataset(scenes, tasks=["depth"])


def test_without_manifest_semseg_needs_a_class_list(scenes: Path) -> None:
    (scenes / "manifest.json").unlink()
    assert ScenesDataset(scenes, tasks=["depth"]).tasks == ("depth",)
    with pytest.raises(DataError, match="classes.txt"):
        ScenesDataset(scenes, tasks=["semseg"])
    (scenes / "classes.txt").write_text("\n".join(CLASS_NAMES + ["extra"]) + "\n")
    (scenes / "parts_classes.txt").write_text("\n".join(PART_NAMES) + "\n")
    ds = ScenesDataset(scenes)
    assert ds.available_tasks == tuple(ALL_TASKS)
    assert ds.num_classes == {"semseg": 6, "parts": 3} and ds.class_names["semseg"][-1] == "extra"


def test_manifest_of_another_version_is_refused(scenes: Path) -> None:
    manifest = json.loads((scenes / "manifest.json").read_text())
    manifest["version"] = 2
    (scenes / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="version 2"):
        ScenesDataset(scenes)


def test_missing_split_file_names_it_and_the_present_splits(scenes: Path) -> None:
    with pytest.raises(DataError, match=r"splits/test\.txt \(splits present: train, val\)"):
        ScenesDataset(scenes, split="test")


def test_missing_label_file_for_a_stem_is_named(scenes: Path) -> None:
    (scenes / "semseg" / "s2.png").unlink()
    with pytest.raises(DataError, match=r"missing semseg label file .*semseg/s2\.png for stem 's2'"):
        ScenesDataset(scenes)
    assert len(ScenesDataset(scenes, tasks=["depth"])) == 3


def test_task_folder_with_other_stems_than_images_is_refused(scenes: Path) -> None:
    np.save(scenes / "depth" / "stray.npy", np.ones((H, W), np.float32))
    with pytest.raises(DataError, match=r"stems of .*depth do not match .*images.*'stray'"):
        ScenesDataset(scenes, tasks=["depth"])


def test_unreadable_image_raises_data_error_naming_it(scenes: Path) -> None:
    (scenes / "images" / "s0.png").write_bytes(b"not a png")
    ds = ScenesDataset(scenes, tasks=["depth"])
    with pytest.raises(DataError, match=r"cannot read image .*s0\.png"):
        ds[0]


def test_class_id_out_of_range_is_refused(scenes: Path) -> None:
    label = np.zeros((H, W), np.uint8)
    label[3, 3] = len(CLASS_NAMES)  # one past the last class, and not 255
    Image.fromarray(label, mode="L").save(scenes / "semseg" / "s0.png")
    ds = ScenesDataset(scenes, tasks=["semseg"])
    with pytest.raises(DataError, match=r"class id 5, outside 0\.\.4"):
        ds[0]


def test_label_of_other_size_than_its_image_is_refused(scenes: Path) -> None:
    np.save(scenes / "depth" / "s0.npy", np.ones((H + 1, W), np.float32))
    with pytest.raises(DataError, match="must have the image's size"):
        ScenesDataset(scenes, tasks=["depth"])[0]


def test_missing_root_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")


def test_open_dataset_detects_scenes_and_names_all_layouts_otherwise(scenes: Path, tmp_path: Path) -> None:
    assert detect_layout(scenes) == "scenes"
    ds = open_dataset(scenes, split="val", tasks=["semseg"], size=8)
    assert isinstance(ds, ScenesDataset) and ds.stems == ["s3"] and ds[0]["semseg"].shape == (8, 8)
    (tmp_path / "junk" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError, match="scenes layout.*PASCAL-Context.*NYUD-v2"):
        open_dataset(tmp_path / "junk")


def test_video_clips_are_listed_sorted_and_frames_kept_in_temporal_order(scenes: Path) -> None:
    assert list_video_clips(scenes) == []
    for name, frames in (("clip_001", ["f_b", "f_a"]), ("clip_000", ["f_2", "f_10", "f_1"])):
        write_scenes(scenes / "videos" / name, {"all": frames}, manifest=False)
    (scenes / "videos" / "notes.txt").write_text("not a clip")
    clips = list_video_clips(scenes)
    assert [c.name for c in clips] == ["clip_000", "clip_001"]
    clip = open_clip(clips[0], tasks=["semseg", "depth"], size=8)
    assert clip.split == "all"
    assert [clip[i]["stem"] for i in range(len(clip))] == ["f_2", "f_10", "f_1"]
    assert clip.class_names["semseg"] == CLASS_NAMES  # from the dataset the clip lives in
    assert clip[0]["depth"].shape == (1, 8, 8)
