"""Synthetic scenes: deterministic files, consistent labels, smooth clips, the disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlcompress.data.synth import (
    CLASS_NAMES,
    TASKS,
    generate_scenes,
    random_clip,
    random_scene,
    render_scene,
)
from mtlcompress.errors import DataError

SIZE = 32
_EXT = {"images": "png", "semseg": "png", "depth": "npy", "normals": "npy", "edges": "png", "saliency": "png"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scenes(n: int, offset: int = 0) -> list[dict[str, np.ndarray]]:
    return [render_scene(random_scene(np.random.default_rng(offset + i)), SIZE) for i in range(n)]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    kwargs = dict(images=3, videos=1, frames=2, size=SIZE)
    generate_scenes(tmp_path / "a", seed=7, **kwargs)
    generate_scenes(tmp_path / "b", seed=7, **kwargs)
    generate_scenes(tmp_path / "c", seed=8, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 3 * 6 + 2 * 6 + 3 + 1  # samples, clip frames, 3 split files, manifest
    assert a == b
    for stem in ("000000", "000001", "000002"):
        assert a[f"images/{stem}.png"] != c[f"images/{stem}.png"]


def test_worker_processes_write_the_same_files_in_the_same_order(tmp_path: Path) -> None:
    kwargs = dict(images=5, videos=2, frames=2, size=SIZE, seed=4)
    calls: list[list[int]] = [[], []]
    generate_scenes(tmp_path / "here", progress=lambda done, total: calls[0].append(done), **kwargs)
    generate_scenes(tmp_path / "workers", progress=lambda done, total: calls[1].append(done), workers=2, **kwargs)
    assert _files(tmp_path / "here") == _files(tmp_path / "workers")
    assert calls[0] == calls[1] == list(range(1, 5 + 2 * 2 + 1))


def test_ordered_map_keeps_order_with_few_results_ahead() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from mtlcompress.data.sample_writer import ordered_map

    jobs = [(i,) for i in range(10)]
    with ThreadPoolExecutor(3) as pool:
        assert list(ordered_map(pool, lambda i: i * i, jobs, ahead=2)) == [i * i for i in range(10)]
    assert list(ordered_map(None, lambda i: i + 1, jobs)) == list(range(1, 11))


def test_an_item_does_not_depend_on_how_many_are_made(tmp_path: Path) -> None:
    generate_scenes(tmp_path / "few", images=2, size=SIZE, seed=3)
    generate_scenes(tmp_path / "more", images=4, size=SIZE, seed=3)
    for task, ext in _EXT.items():
        for stem in ("000000", "000001"):
            name = f"{task}/{stem}.{ext}"
            assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "more" / name).read_bytes()


def test_manifest_splits_and_file_formats(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    manifest = generate_scenes(tmp_path, images=5, videos=2, frames=3, size=SIZE, seed=1,
                               val_fraction=0.4, progress=lambda done, total: calls.append((done, total)))
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest == {
        "format": "mtlcompress.scenes", "version": 1, "seed": 1, "size": SIZE,
        "tasks": list(TASKS), "class_names": list(CLASS_NAMES), "num_classes": len(CLASS_NAMES),
        "images": 5, "splits": {"train": 3, "val": 2},
        "videos": [{"name": "clip_000", "frames": 3}, {"name": "clip_001", "frames": 3}],
    }
    assert calls == [(i, 11) for i in range(1, 12)]
    train = (tmp_path / "splits/train.txt").read_text().split()
    val = (tmp_path / "splits/val.txt").read_text().split()
    assert train == ["000000", "000001", "000002"] and val == ["000003", "000004"]
    for root, stems in [(tmp_path, train + val)] + [
        (tmp_path / "videos" / v["name"], (tmp_path / "videos" / v["name"] / "splits/all.txt").read_text().split())
        for v in manifest["videos"]
    ]:
        assert sorted(p.stem for p in (root / "images").iterdir()) == sorted(stems)
        for stem in stems:
            image = Image.open(root / "images" / f"{stem}.png")
            assert image.mode == "RGB" and image.size == (SIZE, SIZE)
            semseg = Image.open(root / "semseg" / f"{stem}.png")
            assert semseg.mode == "L" and np.asarray(semseg).max() < manifest["num_classes"]
            for task in ("edges", "saliency"):
                mask = Image.open(root / task / f"{stem}.png")
                assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
            depth = np.load(root / "depth" / f"{stem}.npy")
            normals = np.load(root / "normals" / f"{stem}.npy")
            assert depth.dtype == np.float32 and depth.shape == (SIZE, SIZE)
            assert normals.dtype == np.float32 and normals.shape == (SIZE, SIZE, 3)
    assert (tmp_path / "videos/clip_000/splits/all.txt").read_text() == "000000\n000001\n000002\n"


def test_labels_agree_with_each_other() -> None:
    far_share = []
    for out in _scenes(6):
        semseg, depth, normals = out["semseg"], out["depth"], out["normals"]
        assert out["image"].shape == (SIZE, SIZE, 3) and out["image"].dtype == np.uint8
        assert semseg.dtype == np.uint8 and semseg.max() < len(CLASS_NAMES)
        assert np.array_equal(out["saliency"], (semseg >= 2).astype(np.uint8))  # not floor, not wall
        assert np.isfinite(depth).all() and (depth > 0).all()
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
        assert set(np.unique(out["edges"])) <= {0, 1}
        floor = semseg == 0
        assert (normals[floor][:, 1] < -0.5).all()  # camera y points down, floor faces up

        # Every edge pixel sits on a class change, a crease, or a depth jump...
        edges = out["edges"].astype(bool)
        pad_s = np.pad(semseg.astype(int), 1, constant_values=-1)
        pad_d = np.pad(depth, 1, mode="edge")
        pad_n = np.pad(normals, ((1, 1), (1, 1), (0, 0)), mode="edge")
        boundary = np.zeros_like(edges)
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            ns = pad_s[1 + dy:1 + dy + SIZE, 1 + dx:1 + dx + SIZE]
            nd = pad_d[1 + dy:1 + dy + SIZE, 1 + dx:1 + dx + SIZE]
            nn = pad_n[1 + dy:1 + dy + SIZE, 1 + dx:1 + dx + SIZE]
            boundary |= ((ns != semseg) & (ns >= 0)) | ((nn * normals).sum(-1) < 0.95) \
                | (np.abs(nd - depth) > 0.05 * depth)
        assert not (edges & ~boundary).any()
        # ...and every class change is covered by an edge on one side or the other.
        for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
            change = semseg[a] != semseg[b]
            assert (edges[a] | edges[b])[change].all()
        assert edges.mean() < 0.25  # thin lines, not filled regions
        # Occlusion edges are one pixel wide, on the occluding (nearer) side.
        near_on, far_on = [], []
        for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
            jump = (semseg[a] != semseg[b]) & (np.abs(depth[a] - depth[b]) > 0.1 * np.minimum(depth[a], depth[b]))
            a_near = depth[a] < depth[b]
            near_on += list(np.where(a_near, edges[a], edges[b])[jump])
            far_on += list(np.where(a_near, edges[b], edges[a])[jump])
        assert all(near_on)
        far_share.append(np.mean(far_on) if far_on else 0.0)
    assert np.mean(far_share) < 0.3


def test_scenes_are_not_trivial() -> None:
    outs = _scenes(8)
    seen = set()
    for out in outs:
        seen |= set(np.unique(out["semseg"]).tolist())
        assert 0.005 < out["saliency"].mean() < 0.9  # some objects, not only objects
        assert out["image"].astype(float).std() > 10
        assert np.ptp(out["depth"]) > 1.0
    assert {0, 1} <= seen and len(seen - {0, 1}) >= 4


def _frame_mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_clip_frames_change_smoothly() -> None:
    clips = [[render_scene(s, SIZE)["image"] for s in random_clip(np.random.default_rng(i), 4)] for i in range(4)]
    within = [_frame_mad(c[f], c[f + 1]) for c in clips for f in range(3)]
    across = np.mean([_frame_mad(clips[i][0], clips[j][0]) for i in range(4) for j in range(i + 1, 4)])
    assert max(within) < 0.3 * across  # every step of every clip is small
    assert min(within) > 0  # something moves in every step


def test_some_clips_keep_the_camera_still_and_move_few_objects() -> None:
    static = []
    for i in range(12):
        clip = random_clip(np.random.default_rng(100 + i), 3)
        if all(s.camera == clip[0].camera for s in clip):
            moved = sum(a != b for a, b in zip(clip[0].objects, clip[-1].objects))
            assert 1 <= moved <= 2
            a, b = render_scene(clip[0], SIZE)["image"], render_scene(clip[1], SIZE)["image"]
            static.append(float((np.abs(a.astype(int) - b.astype(int)).max(-1) > 0).mean()))
    assert static, "no static-camera clip among 12"
    assert max(static) < 0.25  # most pixels are unchanged between frames


@pytest.mark.parametrize("kwargs", [dict(images=-1), dict(images=1, size=4), dict(images=1, frames=0),
                                    dict(images=1, val_fraction=1.0), dict(images=1, workers=-1)])
def test_bad_arguments_are_rejected_before_writing(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError):
        generate_scenes(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
