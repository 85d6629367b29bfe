"""Vectorised ray casting for the synthetic scenes: analytic hits, solid textures, edges.

Every function takes flat arrays of N rays at once (origins ``[N,3]``, directions
``[N,3]``, not necessarily unit length) so a whole image costs a handful of numpy
calls per primitive and never a Python loop over pixels. A miss is ``t = inf``.

World frame: y up, the floor is the plane y = 0, the back wall is at z = +depth and
the side walls at x = +-half_width. Every object rests on the floor and is described
by its floor anchor (x, z), a size tuple and a 3x3 orientation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

EPS = 1e-4
"""Smallest accepted hit distance, so a ray leaving a surface does not hit it again."""

Hit = tuple[np.ndarray, np.ndarray]
"""``(t [N], normal [N,3])``: distance along each ray (inf on a miss), world normal."""


def _points(o: np.ndarray, d: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Hit points, with misses parked at the ray origin so no inf/nan leaks out."""
    return o + np.where(np.isfinite(t), t, 0.0)[:, None] * d


def _quadratic(a: np.ndarray, half_b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both roots of a t^2 + 2 half_b t + c = 0 (nan where there is no real root)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = half_b * half_b - a * c
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        t0 = (-half_b - sq) / a
        t1 = (-half_b + sq) / a
        linear = np.abs(a) < 1e-12  # ray parallel to a cone's surface line
        t_lin = np.where(np.abs(half_b) > 1e-12, -c / (2.0 * half_b), np.nan)
    t0, t1 = np.where(linear, t_lin, t0), np.where(linear, np.nan, t1)
    return np.fmin(t0, t1), np.fmax(t0, t1)


def _nearest(candidates: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per ray, the smallest valid candidate distance and which candidate it was."""
    stacked = np.stack([np.where(c > EPS, c, np.inf) for c in candidates])  # nan -> inf
    which = np.argmin(stacked, axis=0)
    return stacked[which, np.arange(stacked.shape[1])], which


def intersect_sphere(o: np.ndarray, d: np.ndarray, center: np.ndarray, radius: float) -> Hit:
    """Ray/sphere hit; used on its own and as the two ends of a capsule."""
    oc = o - center
    t0, t1 = _quadratic(np.einsum("ij,ij->i", d, d), np.einsum("ij,ij->i", oc, d),
                        np.einsum("ij,ij->i", oc, oc) - radius * radius)
    t, _ = _nearest([t0, t1])
    return t, (_points(o, d, t) - center) / radius


def _vertical_side(o: np.ndarray, d: np.ndarray, axis_xz: np.ndarray, radius: float,
                   y_lo: float, y_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Both hits with a vertical cylinder wall of finite height (nan where invalid)."""
    ox, oz = o[:, 0] - axis_xz[0], o[:, 2] - axis_xz[1]
    dx, dz = d[:, 0], d[:, 2]
    t0, t1 = _quadratic(dx * dx + dz * dz, ox * dx + oz * dz, ox * ox + oz * oz - radius * radius)
    out = []
    for t in (t0, t1):
        y = o[:, 1] + np.nan_to_num(t) * d[:, 1]
        out.append(np.where((y >= y_lo) & (y <= y_hi), t, np.nan))
    return out[0], out[1]


def _disc(o: np.ndarray, d: np.ndarray, axis_xz: np.ndarray, radius: float, y: float) -> np.ndarray:
    """Hit with a horizontal disc (a cylinder or cone cap)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y - o[:, 1]) / d[:, 1]
    p = _points(o, d, np.where(np.isfinite(t), t, np.nan))
    inside = (p[:, 0] - axis_xz[0]) ** 2 + (p[:, 2] - axis_xz[1]) ** 2 <= radius * radius
    return np.where(inside & np.isfinite(t), t, np.nan)


def _radial_normal(p: np.ndarray, axis_xz: np.ndarray, up: np.ndarray | float = 0.0) -> np.ndarray:
    n = np.stack([p[:, 0] - axis_xz[0], np.broadcast_to(up, p[:, 0].shape), p[:, 2] - axis_xz[1]], axis=1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _pick_normal(which: np.ndarray, normals: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.broadcast_to(n, (which.shape[0], 3)) for n in normals])[which, np.arange(which.shape[0])]


_UP = np.array([0.0, 1.0, 0.0])


def _sphere(o: np.ndarray, d: np.ndarray, xz: np.ndarray, size: Sequence[float], rot: np.ndarray) -> Hit:
    (r,) = size[:1]
    return intersect_sphere(o, d, np.array([xz[0], r, xz[1]]), r)


def _box(o: np.ndarray, d: np.ndarray, xz: np.ndarray, size: Sequence[float], rot: np.ndarray) -> Hit:
    half = np.asarray(size[:3], dtype=np.float64)
    center = np.array([xz[0], half[1], xz[1]])
    lo, ld = (o - center) @ rot, d @ rot  # into the box frame (rot columns = box axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        ld = np.where(np.abs(ld) < 1e-12, 1e-12, ld)
        t_a, t_b = (-half - lo) / ld, (half - lo) / ld
    t_in, t_out = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    enter, leave = t_in.max(axis=1), t_out.min(axis=1)
    t = np.where(enter > EPS, enter, leave)
    t = np.where((leave >= enter) & (t > EPS), t, np.inf)
    face = np.where((enter > EPS)[:, None], t_in, -t_out).argmax(axis=1)
    local = np.zeros_like(ld)
    local[np.arange(len(face)), face] = -np.sign(ld[np.arange(len(face)), face])
    local *= np.where((enter > EPS)[:, None], 1.0, -1.0)  # exiting hit: normal points out
    return t, local @ rot.T


def _cylinder(o: np.ndarray, d: np.ndarray, xz: np.ndarray, size: Sequence[float], rot: np.ndarray) -> Hit:
    r, h = size[:2]
    s0, s1 = _vertical_side(o, d, xz, r, 0.0, h)
    t, which = _nearest([s0, s1, _disc(o, d, xz, r, h), _disc(o, d, xz, r, 0.0)])
    p = _points(o, d, t)
    return t, _pick_normal(which, [_radial_normal(p, xz)] * 2 + [_UP, -_UP])


def _cone(o: np.ndarray, d: np.ndarray, xz: np.ndarray, size: Sequence[float], rot: np.ndarray) -> Hit:
    r, h = size[:2]
    k2 = (r / h) ** 2
    ox, oz = o[:, 0] - xz[0], o[:, 2] - xz[1]
    below_apex = h - o[:, 1]
    t0, t1 = _quadratic(d[:, 0] ** 2 + d[:, 2] ** 2 - k2 * d[:, 1] ** 2,
                        ox * d[:, 0] + oz * d[:, 2] + k2 * below_apex * d[:, 1],
                        ox * ox + oz * oz - k2 * below_apex**2)
    sides = []
    for t_side in (t0, t1):
        y = o[:, 1] + np.nan_to_num(t_side) * d[:, 1]
        sides.append(np.where((y >= 0.0) & (y <= h), t_side, np.nan))
    t, which = _nearest(sides + [_disc(o, d, xz, r, 0.0)])
    p = _points(o, d, t)
    return t, _pick_normal(which, [_radial_normal(p, xz, k2 * (h - p[:, 1]))] * 2 + [-_UP])


def _capsule(o: np.ndarray, d: np.ndarray, xz: np.ndarray, size: Sequence[float], rot: np.ndarray) -> Hit:
    r, length = size[:2]
    s0, s1 = _vertical_side(o, d, xz, r, r, r + length)
    lo_c, hi_c = np.array([xz[0], r, xz[1]]), np.array([xz[0], r + length, xz[1]])
    t_lo, _ = intersect_sphere(o, d, lo_c, r)
    t_hi, _ = intersect_sphere(o, d, hi_c, r)
    t, which = _nearest([s0, s1, t_lo, t_hi])
    p = _points(o, d, t)
    return t, _pick_normal(which, [_radial_normal(p, xz)] * 2 + [(p - lo_c) / r, (p - hi_c) / r])


PRIMITIVES: dict[str, Callable[..., Hit]] = {
    "sphere": _sphere, "box": _box, "cylinder": _cylinder, "cone": _cone, "capsule": _capsule,
}
"""Object category -> ``fn(o, d, anchor_xz, size, orientation) -> (t, normal)``."""


def _bounding_sphere(category: str, anchor: np.ndarray, size: Sequence[float]) -> tuple[np.ndarray, float]:
    if category == "sphere":
        half_height, radius = size[0], size[0]
    elif category == "box":
        half_height, radius = size[1], float(np.linalg.norm(size[:3]))
    elif category == "capsule":
        half_height = size[0] + size[1] / 2.0
        radius = half_height
    else:  # cylinder, cone
        half_height, radius = size[1] / 2.0, math.hypot(size[0], size[1] / 2.0)
    return np.array([anchor[0], half_height, anchor[1]]), radius * 1.01


def intersect_object(category: str, o: np.ndarray, d: np.ndarray, anchor: np.ndarray,
                     size: Sequence[float], orientation: np.ndarray) -> Hit:
    """Hit with one object, testing only rays that pass its bounding sphere.

    Objects cover a few percent of the image, so culling first makes the exact
    (expensive) intersection run on a small subset of rays.
    """
    center, radius = _bounding_sphere(category, anchor, size)
    oc = o - center
    a, half_b = np.einsum("ij,ij->i", d, d), np.einsum("ij,ij->i", oc, d)
    disc = half_b * half_b - a * (np.einsum("ij,ij->i", oc, oc) - radius * radius)
    near = np.flatnonzero((disc >= 0) & (-half_b + np.sqrt(np.maximum(disc, 0.0)) > 0))
    t, normal = np.full(len(d), np.inf), np.zeros((len(d), 3))
    if near.size:
        t[near], normal[near] = PRIMITIVES[category](o[near], d[near], anchor, size, orientation)
    return t, normal


FRONT_WALL_Z = -4.0
"""The wall behind the camera; cameras stay in front of it (z > FRONT_WALL_Z)."""


def intersect_room(
    o: np.ndarray, d: np.ndarray, half_width: float, depth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit with floor / back / left / right / front wall (part index 0..4).

    Four walls around the camera mean every ray with any horizontal component ends
    somewhere, so depth is finite however a clip turns the camera. There is no ceiling.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        cands = [-o[:, 1] / d[:, 1], (depth - o[:, 2]) / d[:, 2], (-half_width - o[:, 0]) / d[:, 0],
                 (half_width - o[:, 0]) / d[:, 0], (FRONT_WALL_Z - o[:, 2]) / d[:, 2]]
    t, part = _nearest([np.where(np.isfinite(c), c, np.nan) for c in cands])
    normals = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 0, 1]], dtype=np.float64)
    return t, normals[part], part


def rot_y(angle: float) -> np.ndarray:
    """Rotation about the vertical axis: box yaw and object spin."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation about a unit axis."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def occlusion_edges(instance: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """1-px boundaries: where the instance id changes, marked on the nearer side.

    Each surface is a convex solid or a plane with its own instance id, so every depth
    discontinuity (occlusion) is also an instance change; marking the nearer pixel puts
    the line on the occluding contour, one pixel wide.
    """
    edges = np.zeros(instance.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        differ = instance[a] != instance[b]
        first_nearer = depth[a] <= depth[b]
        edges[a] |= differ & first_nearer
        edges[b] |= differ & ~first_nearer
    return edges


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic lattice hash in [0, 1]; integer maths so it is platform-stable."""
    h = ((ix & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (
        (iy & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0xD8163841)) ^ (
        (iz & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0xCB1AB31F)) ^ np.uint32(seed & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h & np.uint32(0xFFFF)).astype(np.float64) / 65535.0


def value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] (trilinear, smoothstep-eased)."""
    cell = np.floor(p)
    f = p - cell
    f = f * f * (3.0 - 2.0 * f)
    ic = cell.astype(np.int64)
    out = np.zeros(p.shape[0])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                     * (f[:, 2] if dz else 1 - f[:, 2]))
                out += w * _hash01(ic[:, 0] + dx, ic[:, 1] + dy, ic[:, 2] + dz, seed)
    return out


def pattern_weight(pattern: str, p: np.ndarray, frequency: float, axis: np.ndarray, seed: int) -> np.ndarray:
    """Solid-texture mix weight in [0, 1] at local points ``p`` [M,3].

    Solid (3D) textures need no UV unwrapping and stick to an object as it moves or
    rolls, which keeps video frames temporally consistent.
    """
    q = p * frequency
    if pattern == "checker":
        return (np.floor(q).astype(np.int64).sum(axis=1) % 2).astype(np.float64)
    if pattern == "stripes":
        return (np.floor(q @ axis).astype(np.int64) % 2).astype(np.float64)
    if pattern == "noise":
        n = 0.65 * value_noise(q, seed) + 0.35 * value_noise(2.03 * q + 17.0, seed + 1)
        return np.clip((n - 0.2) / 0.6, 0.0, 1.0)
    raise ValueError(f"unknown texture pattern {pattern!r}")
