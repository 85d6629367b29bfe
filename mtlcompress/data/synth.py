"""Procedural ray-cast rooms with exact labels for five dense tasks, written to disk.

Demos, tests and benchmarks need real images with real, mutually consistent labels and
must never download anything. A tiny numpy ray caster provides that: every label comes
from the same per-pixel hit, so semseg, depth, normals, edges and saliency agree
exactly. ``generate_scenes`` writes the generic folder layout that the loaders read.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mtlcompress.data import _raycast
from mtlcompress.data.manifest import SCENES_FORMAT, SCENES_VERSION
from mtlcompress.data.sample_writer import SampleWriter, ordered_map
from mtlcompress.errors import DataError
from mtlcompress.io.atomic import write_json_atomic
from mtlcompress.io.image_size import SizeLike, image_size

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "sphere", "box", "cylinder", "cone", "capsule")
"""Semantic classes; a class id is an index into this tuple."""
TASKS: tuple[str, ...] = ("semseg", "depth", "normals", "edges", "saliency")

_FIRST_OBJECT_ID = 2  # ids below are floor and wall: the background for saliency
_OBJECT_CLASSES = CLASS_NAMES[_FIRST_OBJECT_ID:]
_ROOM_PARTS = 5  # floor, back, left, right, front wall: instance ids 0..4, objects after
_MIN_OBJECT_Z = 1.2  # objects stay this far in front of the camera's z range
_MAX_YAW = 0.6  # radians; with the field of view this keeps the back wall in sight


@dataclass(frozen=True)
class Texture:
    """A two-colour solid texture: ``pattern`` mixes ``color_a`` into ``color_b``."""

    pattern: str  # "checker" | "stripes" | "noise"
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    frequency: float
    axis: tuple[float, float, float]  # stripe direction
    seed: int  # noise lattice


@dataclass(frozen=True)
class SceneObject:
    """A solid resting on the floor at ``anchor`` = (x, z).

    ``size`` is (radius,) for a sphere, (half_x, half_y, half_z) for a box,
    (radius, height) for a cylinder or cone and (radius, straight length) for a capsule.
    ``orientation`` is a row-major 3x3 rotation: boxes use it for their geometry (a
    rotation about y), every object for its texture (so a sphere visibly rolls).
    """

    category: str
    anchor: tuple[float, float]
    size: tuple[float, ...]
    orientation: tuple[float, ...]
    texture: Texture

    def footprint(self) -> float:
        """Radius of the floor disc the object covers, for placement without overlap."""
        if self.category == "box":
            return math.hypot(self.size[0], self.size[2])
        return self.size[0]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; ``pitch`` < 0 looks down, ``yaw`` > 0 turns towards +x."""

    position: tuple[float, float, float]
    yaw: float
    pitch: float
    fov_deg: float


@dataclass(frozen=True)
class Scene:
    """Everything ``render_scene`` needs; immutable so clips can share objects."""

    camera: Camera
    objects: tuple[SceneObject, ...]
    room_half_width: float
    room_depth: float
    floor_texture: Texture
    wall_texture: Texture
    light_direction: tuple[float, float, float]  # unit vector towards the light
    ambient: float


def _camera_axes(camera: Camera) -> np.ndarray:
    """Columns = camera x (right), y (down), z (forward) in world coordinates."""
    cy, sy, cp, sp = math.cos(camera.yaw), math.sin(camera.yaw), math.cos(camera.pitch), math.sin(camera.pitch)
    forward = np.array([sy * cp, sp, cy * cp])
    right = np.array([cy, 0.0, -sy])
    return np.stack([right, np.cross(right, forward), forward], axis=1)


def _random_texture(rng: np.random.Generator, frequency: tuple[float, float]) -> Texture:
    color_a = rng.uniform(0.15, 0.95, 3)
    color_b = np.clip(color_a * rng.uniform(0.35, 0.75) + rng.uniform(-0.1, 0.1, 3), 0.05, 1.0) \
        if rng.random() < 0.5 else rng.uniform(0.1, 0.95, 3)
    axis = rng.normal(size=3)
    return Texture(
        pattern=str(rng.choice(["checker", "stripes", "noise"])),
        color_a=tuple(float(c) for c in color_a),
        color_b=tuple(float(c) for c in color_b),
        frequency=float(rng.uniform(*frequency)),
        axis=tuple(float(a) for a in axis / np.linalg.norm(axis)),
        seed=int(rng.integers(0, 2**31)),
    )


def _random_size(rng: np.random.Generator, category: str) -> tuple[float, ...]:
    if category == "sphere":
        return (float(rng.uniform(0.3, 0.75)),)
    if category == "box":
        return tuple(float(v) for v in rng.uniform([0.25, 0.2, 0.25], [0.7, 0.75, 0.7]))
    if category == "capsule":
        return (float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.3, 1.0)))
    return (float(rng.uniform(0.2, 0.55)), float(rng.uniform(0.5, 1.6)))  # cylinder, cone


def _flat(matrix: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in matrix.reshape(-1))


def _clamp_anchor(x: float, z: float, radius: float, half_width: float, depth: float) -> tuple[float, float]:
    return (min(max(x, -half_width + radius + 0.05), half_width - radius - 0.05),
            min(max(z, _MIN_OBJECT_Z + radius), depth - radius - 0.05))


def random_scene(rng: np.random.Generator) -> Scene:
    """Sample a room, a camera inside it and 2-6 objects placed where the camera sees them."""
    half_width, depth = float(rng.uniform(3.5, 5.0)), float(rng.uniform(7.0, 9.5))
    height = float(rng.uniform(1.1, 2.2))
    look_at = float(rng.uniform(3.0, 5.0))  # floor distance the camera aims at
    camera = Camera(
        position=(float(rng.uniform(-1.2, 1.2)), height, float(rng.uniform(-1.5, 0.0))),
        yaw=float(rng.uniform(-0.35, 0.35)),
        pitch=float(-math.atan2(height, look_at) + rng.uniform(-0.08, 0.08)),
        fov_deg=float(rng.uniform(50.0, 65.0)),
    )
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(2, 7))):
        category = str(rng.choice(_OBJECT_CLASSES))
        size = _random_size(rng, category)
        yaw = float(rng.uniform(-math.pi, math.pi))
        orientation = _raycast.rot_y(yaw) if category != "sphere" else _raycast.rotation_about(
            np.array([1.0, 0.0, 0.0]), float(rng.uniform(0, 2 * math.pi))) @ _raycast.rot_y(yaw)
        obj = SceneObject(category, (0.0, 0.0), size, _flat(orientation), _random_texture(rng, (3.0, 9.0)))
        for _attempt in range(30):
            dist = rng.uniform(2.0, 6.5)
            angle = camera.yaw + rng.uniform(-0.4, 0.4) * math.radians(camera.fov_deg)
            anchor = _clamp_anchor(camera.position[0] + dist * math.sin(angle),
                                   camera.position[2] + dist * math.cos(angle),
                                   obj.footprint(), half_width, depth)
            if all(math.dist(anchor, o.anchor) > obj.footprint() + o.footprint() + 0.1 for o in objects):
                objects.append(replace(obj, anchor=anchor))
                break
    azimuth, elevation = rng.uniform(-math.pi, math.pi), rng.uniform(0.6, 1.25)
    light = (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))
    return Scene(
        camera=camera, objects=tuple(objects), room_half_width=half_width, room_depth=depth,
        floor_texture=_random_texture(rng, (0.8, 2.0)), wall_texture=_random_texture(rng, (0.6, 2.5)),
        light_direction=tuple(float(v) for v in light), ambient=float(rng.uniform(0.25, 0.45)),
    )


def _move_object(
    obj: SceneObject, velocity: np.ndarray, spin: float, scene: Scene
) -> tuple[SceneObject, np.ndarray]:
    """One frame of sliding (boxes, cylinders, ...) or rolling (spheres); walls bounce."""
    r = obj.footprint()
    x, z = obj.anchor[0] + velocity[0], obj.anchor[1] + velocity[1]
    cx, cz = _clamp_anchor(x, z, r, scene.room_half_width, scene.room_depth)
    velocity = np.where([cx != x, cz != z], -velocity, velocity)
    rot = np.array(obj.orientation).reshape(3, 3)
    speed = float(np.linalg.norm(velocity))
    if obj.category == "sphere" and speed > 0:
        axis = np.cross([0.0, 1.0, 0.0], [velocity[0] / speed, 0.0, velocity[1] / speed])
        rot = _raycast.rotation_about(axis, speed / obj.size[0]) @ rot  # rolling without slipping
    else:
        rot = _raycast.rot_y(spin) @ rot
    return replace(obj, anchor=(cx, cz), orientation=_flat(rot)), velocity


def random_clip(rng: np.random.Generator, frames: int) -> list[Scene]:
    """A smooth clip: consecutive frames differ by a small camera or object motion.

    Half the clips dolly and pan the camera while objects drift; the other half keep
    the camera still and move only one or two objects, so most of the frame is static
    from one frame to the next (what temporal-sparsity work relies on).
    """
    if frames < 1:
        raise DataError(f"a clip needs at least one frame, got {frames}")
    scene = random_scene(rng)
    static_camera = bool(rng.random() < 0.5)
    n = len(scene.objects)
    movers = rng.choice(n, size=min(n, int(rng.integers(1, 3))), replace=False) if static_camera \
        else np.flatnonzero(rng.random(n) < 0.6)
    velocities = {int(i): rng.uniform(0.03, 0.08) * np.array([math.cos(a), math.sin(a)])
                  for i, a in zip(movers, rng.uniform(-math.pi, math.pi, len(movers)))}
    spins = {int(i): float(rng.uniform(-0.06, 0.06)) for i in movers}
    cam_step = np.zeros(3) if static_camera else rng.uniform([-0.05, -0.01, 0.02], [0.05, 0.01, 0.07])
    yaw_step = 0.0 if static_camera else float(rng.uniform(-0.015, 0.015))
    clip = [scene]
    for _ in range(frames - 1):
        objects = list(scene.objects)
        for i in velocities:
            objects[i], velocities[i] = _move_object(objects[i], velocities[i], spins[i], scene)
        cam = scene.camera
        pos = np.array(cam.position) + cam_step
        pos[0] = min(max(pos[0], -scene.room_half_width + 1.0), scene.room_half_width - 1.0)
        pos[1] = min(max(pos[1], 0.9), 2.4)
        pos[2] = min(pos[2], 0.3)  # objects start at z >= _MIN_OBJECT_Z; keep clear of them
        yaw = min(max(cam.yaw + yaw_step, -_MAX_YAW), _MAX_YAW)  # keep looking into the room
        camera = replace(cam, position=tuple(float(v) for v in pos), yaw=yaw)
        scene = replace(scene, camera=camera, objects=tuple(objects))
        clip.append(scene)
    return clip


def _albedo(texture: Texture, points: np.ndarray) -> np.ndarray:
    w = _raycast.pattern_weight(texture.pattern, points, texture.frequency, np.array(texture.axis), texture.seed)
    return np.array(texture.color_a) * (1.0 - w[:, None]) + np.array(texture.color_b) * w[:, None]


def render_scene(scene: Scene, size: SizeLike) -> dict[str, np.ndarray]:
    """Ray-cast ``scene`` into an image of ``size`` (one number, or (height, width); the
    field of view is horizontal) and its five label maps.

    All outputs come from one hit per pixel centre, so they agree pixel for pixel.
    ``depth`` is the z-depth in metres along the camera's forward axis (not the ray
    length) and ``normals`` are unit vectors in the camera frame: x right, y down, z
    forward (OpenCV convention), pointing towards the camera side of the surface.

    Returns:
        ``image`` uint8 [H,W,3]; ``semseg`` uint8 [H,W] class ids into CLASS_NAMES;
        ``depth`` float32 [H,W] > 0; ``normals`` float32 [H,W,3]; ``edges`` and
        ``saliency`` uint8 [H,W] in {0, 1}.
    """
    cam_axes = _camera_axes(scene.camera)
    height, width = image_size(size, "size", DataError)
    focal = (width / 2.0) / math.tan(math.radians(scene.camera.fov_deg) / 2.0)
    across = (np.arange(width) + 0.5 - width / 2.0) / focal
    down = (np.arange(height) + 0.5 - height / 2.0) / focal
    d_cam = np.stack(np.broadcast_arrays(across[None, :], down[:, None], 1.0), axis=-1).reshape(-1, 3)
    d = d_cam @ cam_axes.T  # camera z component is 1, so the hit distance t is z-depth
    o = np.broadcast_to(np.array(scene.camera.position), d.shape)

    t, normal, instance = _raycast.intersect_room(o, d, scene.room_half_width, scene.room_depth)
    for i, obj in enumerate(scene.objects):
        rot = np.array(obj.orientation).reshape(3, 3)
        t_obj, n_obj = _raycast.intersect_object(obj.category, o, d, np.array(obj.anchor), obj.size, rot)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        normal = np.where(closer[:, None], n_obj, normal)
        instance = np.where(closer, _ROOM_PARTS + i, instance)
    normal = normal / np.linalg.norm(normal, axis=1, keepdims=True)
    normal = np.where((np.einsum("ij,ij->i", normal, d) > 0)[:, None], -normal, normal)
    points = o + t[:, None] * d

    object_classes = [CLASS_NAMES.index(obj.category) for obj in scene.objects]
    class_of_instance = np.array([0] + [1] * (_ROOM_PARTS - 1) + object_classes, np.uint8)
    albedo = np.empty_like(points)
    floor, walls = instance == 0, (instance >= 1) & (instance < _ROOM_PARTS)
    albedo[floor] = _albedo(scene.floor_texture, points[floor])
    albedo[walls] = _albedo(scene.wall_texture, points[walls])
    for i, obj in enumerate(scene.objects):
        mine = instance == _ROOM_PARTS + i
        if mine.any():
            rot = np.array(obj.orientation).reshape(3, 3)
            local = (points[mine] - np.array([obj.anchor[0], 0.0, obj.anchor[1]])) @ rot
            albedo[mine] = _albedo(obj.texture, local)

    light = np.array(scene.light_direction)
    lambert = np.clip(normal @ light, 0.0, 1.0)
    lit = np.flatnonzero(lambert > 0)
    if scene.objects and lit.size:  # shadows cast by objects (walls cast none)
        s_o = points[lit] + 2e-3 * normal[lit]
        s_d = np.broadcast_to(light, s_o.shape)
        blocked = np.zeros(lit.size, dtype=bool)
        for obj in scene.objects:
            rot = np.array(obj.orientation).reshape(3, 3)
            hit = _raycast.intersect_object(obj.category, s_o, s_d, np.array(obj.anchor), obj.size, rot)
            blocked |= np.isfinite(hit[0])
        lambert[lit[blocked]] = 0.0
    shade = scene.ambient + (1.0 - scene.ambient) * lambert
    image = np.clip(albedo * shade[:, None] * 255.0 + 0.5, 0, 255).astype(np.uint8)

    hw = (height, width)
    instance = instance.reshape(hw)
    depth = t.reshape(hw).astype(np.float32)
    semseg = class_of_instance[instance]
    return {
        "image": image.reshape(height, width, 3),
        "semseg": semseg,
        "depth": depth,
        "normals": (normal @ cam_axes).reshape(height, width, 3).astype(np.float32),
        "edges": _raycast.occlusion_edges(instance, depth).astype(np.uint8),
        "saliency": (semseg >= _FIRST_OBJECT_ID).astype(np.uint8),
    }


def _make_folders(root: Path) -> None:
    for name in ("images", *TASKS, "splits"):
        (root / name).mkdir(parents=True, exist_ok=True)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def generate_scenes(
    out_dir: str | os.PathLike,
    *,
    images: int,
    videos: int = 0,
    frames: int = 8,
    size: SizeLike = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 0,
) -> dict:
    """Render a dataset in the generic folder layout and return its manifest.

    Each image and clip draws from its own generator seeded by (seed, index), so the
    output is byte-identical for the same arguments and item i does not depend on how
    many items are made. The last ``round(images * val_fraction)`` stems form the val
    split (items are i.i.d., so no shuffle is needed). ``manifest.json`` is written
    last: a folder that has one is complete. ``size`` is one number (square images) or
    (height, width). ``workers`` > 0 renders in that many processes (the files are the
    same as with 0: every item has its own seed).
    """
    height, width = image_size(size, "size", DataError)
    if images < 0 or videos < 0:
        raise DataError(f"images and videos must be >= 0, got images={images}, videos={videos}")
    if frames < 1 or min(height, width) < 8:
        raise DataError(f"need frames >= 1 and size >= 8, got frames={frames}, size={size}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    root = Path(out_dir)
    (root / "manifest.json").unlink(missing_ok=True)  # a half-rewritten folder must not look complete
    _make_folders(root)

    stems = [f"{i:06d}" for i in range(images)]
    n_val = min(int(round(images * val_fraction)), max(images - 1, 0))
    clips = [{"name": f"clip_{j:03d}", "frames": frames} for j in range(videos)]
    frame_stems = [f"{f:06d}" for f in range(frames)]
    # spawn, not fork: the parent may hold torch's thread pools, which a fork copies broken.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers else None
    try:
        with SampleWriter(images + videos * frames, progress) as writer:
            for stem, sample in zip(stems, ordered_map(pool, _render_image, [(seed, i, size) for i in range(images)])):
                writer.submit(root, stem, sample)
            _write_lines(root / "splits" / "train.txt", stems[: images - n_val])
            _write_lines(root / "splits" / "val.txt", stems[images - n_val:])
            for clip, samples in zip(clips, ordered_map(pool, _render_clip, [(seed, j, frames, size)
                                                                             for j in range(videos)])):
                clip_root = root / "videos" / clip["name"]
                _make_folders(clip_root)
                for frame_stem, sample in zip(frame_stems, samples):
                    writer.submit(clip_root, frame_stem, sample)
                _write_lines(clip_root / "splits" / "all.txt", frame_stems)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    manifest = {
        "format": SCENES_FORMAT, "version": SCENES_VERSION, "seed": seed,
        "size": height if height == width else [height, width],
        "tasks": list(TASKS), "class_names": list(CLASS_NAMES), "num_classes": len(CLASS_NAMES),
        "images": images, "splits": {"train": images - n_val, "val": n_val}, "videos": clips,
    }
    write_json_atomic(root / "manifest.json", manifest)
    return manifest


def _render_image(seed: int, index: int, size: SizeLike) -> dict[str, np.ndarray]:
    """Still image ``index``: its own generator, so any process renders the same sample."""
    return render_scene(random_scene(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))), size)


def _render_clip(seed: int, index: int, frames: int, size: SizeLike) -> list[dict[str, np.ndarray]]:
    """Clip ``index``, every frame (a clip's frames share one camera path, so one task)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
    return [render_scene(scene, size) for scene in random_clip(rng, frames)]
