"""A small per-machine cost model that picks the fastest way to run each delta layer.

Whether the delta identity ``y_t = y_0 + dW_t x_0 + W_t dx + db_t`` is faster than just
running the layer depends on the machine: at ViT sequence lengths (~200 tokens) the
fixed overhead of gather/scatter or sparse kernels can eat the saved FLOPs. So every
path gets a two-number linear model, ``seconds = overhead_s + per_unit_s * units``
(the CSR weight-delta product a third, per row), fitted once per machine by
:func:`calibrate` on cold caches and cached as versioned JSON.

Paths priced for ``W_t dx`` (the activation side), see :func:`choose_path`:

* ``"dense"``: run the layer plainly, ``F.linear(x_t, W_t, b_t)``: one dense GEMM over
  all rows, and no ``dW x_0`` term. Units: multiply-adds ``rows * in * out``.
* ``"token"``: :func:`~mtlcompress.runtime.kernels.token_sparse_linear`, gather
  changed rows, GEMM, scatter. Units: ``changed_rows * in * out``; the gather/scatter
  cost at the calibrated row count is folded into the overhead.
* ``"element"``: :func:`~mtlcompress.runtime.kernels.element_sparse_linear`. Units:
  ``nnz(dx) * out``.

The ``dW_t x_0`` term (needed by the token and element paths only) is priced by
:func:`choose_weight_path`: ``"none"`` (no delta), ``"sparse"`` (CSR, units
``nnz(dW) * rows``, plus a cost per row) or ``"dense"`` (a dense GEMM, priced with the
dense model).

Video frames of several tasks run in lockstep (:mod:`~mtlcompress.runtime.lockstep`)
give each linear layer a few changed rows per task; :func:`choose_stacking` prices one
GEMM per task against one GEMM with the shared ``W_0`` over all tasks' rows plus each
sub-task's ``dW_t`` on its own rows.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime import kernels

__all__ = [
    "TIMINGS_FORMAT",
    "TIMINGS_VERSION",
    "CACHE_DIR_ENV",
    "LinearCost",
    "KernelTimings",
    "calibrate",
    "estimate_path_costs",
    "choose_path",
    "choose_weight_path",
    "choose_stacking",
    "save_timings",
    "load_timings",
    "default_cache_path",
    "load_or_calibrate",
]

TIMINGS_FORMAT = "mtlcompress.kernel_timings"
# 2: sparse_weight fitted over row counts too; 3: timed on int32-index CSR (kernels.to_csr);
# 4: timed with cold caches, fitted in relative error, a cost per row for the CSR product;
# 5: the CSR product writes over an empty result (kernels.sparse_dense_matmul), no zero fill
TIMINGS_VERSION = 5
CACHE_DIR_ENV = "MTLCOMPRESS_CACHE_DIR"

_MAX_REPEATS = 50
_WARMUP = 2
# Every timed call finds its operands out of cache, as a layer's weights are in a real
# pass: a frame reads every task's weights once, far more bytes than a CPU cache holds.
# Timed warm, a GEMM over a few rows (one read of a dense weight) looked cheaper than the
# CSR weight-delta product that reads ~25x fewer bytes; picking it slowed video frames ~10%.
_EVICT_BYTES = 64 * 2**20
# Synthetic densities timed per path; a few points per line are enough for two numbers.
_DENSE_ROW_FRACTIONS = (0.25, 0.5, 1.0)
_TOKEN_DENSITIES = (0.05, 0.15, 0.3, 0.5)
_ELEMENT_DENSITIES = (0.01, 0.05, 0.1)
_WEIGHT_DENSITIES = (0.01, 0.02, 0.05)
_FEW_ROWS = (4, 32)  # few-row calls (video frames), timed besides fractions of all rows (2 % density for dW)


@dataclass(frozen=True)
class LinearCost:
    """``seconds = overhead_s + per_unit_s * units + per_row_s * rows`` for one kernel
    path. Only the CSR weight-delta product has a cost per row: it handles each row of
    its dense operand at a cost that does not shrink with the weight's non-zeros."""

    overhead_s: float
    per_unit_s: float
    per_row_s: float = 0.0

    def __call__(self, units: float, rows: float = 0.0) -> float:
        return self.overhead_s + self.per_unit_s * units + self.per_row_s * rows


@dataclass
class KernelTimings:
    """Fitted cost lines for every path on one device and dtype (units: module docstring)."""

    dense: LinearCost
    token: LinearCost
    element: LinearCost
    sparse_weight: LinearCost
    device: str = "cpu"
    dtype: str = "float32"
    device_name: str = ""
    torch_version: str = field(default_factory=lambda: torch.__version__)
    calibration_shape: tuple[int, int, int] = (197, 384, 1536)  # tokens, in, out

    def to_dict(self) -> dict:
        return {"format": TIMINGS_FORMAT, "version": TIMINGS_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> KernelTimings:
        if data.get("format") != TIMINGS_FORMAT:
            raise MtlCompressError(f"not a kernel-timings file (format={data.get('format')!r})")
        if data.get("version") != TIMINGS_VERSION:
            raise MtlCompressError(
                f"kernel-timings version {data.get('version')!r} is not supported "
                f"(expected {TIMINGS_VERSION}); delete the file to recalibrate"
            )
        try:
            paths = {name: LinearCost(float(data[name]["overhead_s"]), float(data[name]["per_unit_s"]),
                                      float(data[name]["per_row_s"]))
                     for name in ("dense", "token", "element", "sparse_weight")}
            return cls(
                **paths,
                device=str(data["device"]),
                dtype=str(data["dtype"]),
                device_name=str(data["device_name"]),
                torch_version=str(data["torch_version"]),
                calibration_shape=tuple(int(v) for v in data["calibration_shape"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MtlCompressError(f"kernel-timings file is malformed: {exc!r}; delete it to recalibrate") from exc


# --------------------------------------------------------------------------------------
# Choosing paths.
# --------------------------------------------------------------------------------------
def _weight_costs(timings: KernelTimings, *, tokens: int, in_features: int, out_features: int,
                  weight_density: float) -> dict[str, float]:
    if weight_density <= 0:
        return {"none": 0.0}
    nnz = weight_density * in_features * out_features
    return {
        "sparse": timings.sparse_weight(nnz * tokens, rows=tokens),
        "dense": timings.dense(tokens * in_features * out_features),
    }


def choose_weight_path(timings: KernelTimings, *, tokens: int, in_features: int, out_features: int,
                       weight_density: float) -> str:
    """How to compute ``dW_t x_0``: ``"none"`` (density 0), ``"sparse"`` (CSR) or ``"dense"``.

    ``tokens`` is the total number of rows (batch x sequence length).
    """
    costs = _weight_costs(timings, tokens=tokens, in_features=in_features, out_features=out_features,
                          weight_density=weight_density)
    return min(costs, key=costs.__getitem__)


def choose_stacking(timings: KernelTimings, *, rows: list[int], in_features: int, out_features: int,
                    weight_densities: list[float]) -> bool:
    """Whether one GEMM with the shared weight over every task's ``rows`` plus a
    ``dW_t`` term per task beats one GEMM per task with its own weight.

    ``rows[t]``: task ``t``'s row count; ``weight_densities[t]``: the non-zero fraction of
    its ``dW_t`` (0 for the base task or unchanged weights).
    """
    macs = in_features * out_features
    separate = sum(timings.token(r * macs) for r in rows if r)
    stacked = timings.token(sum(rows) * macs) + sum(
        min(_weight_costs(timings, tokens=r, in_features=in_features, out_features=out_features,
                          weight_density=d).values()) for r, d in zip(rows, weight_densities) if r)
    return stacked < separate


def estimate_path_costs(timings: KernelTimings, *, tokens: int, in_features: int, out_features: int,
                        token_density: float, weight_density: float,
                        element_density: float | None = None, stacked: bool = False) -> dict[str, float]:
    """Predicted seconds per path for one layer call, ``dW_t x_0`` included where needed.

    Args:
        tokens: total rows (batch x sequence length).
        token_density: fraction of token rows changed (after thresholding).
        weight_density: fraction of non-zero entries in ``dW_t`` (0 for shared weights).
        element_density: fraction of non-zero entries of dx; ``None`` assumes every
            changed token is fully dense (= ``token_density``).
        stacked: the changed rows join a GEMM with the shared base weight that runs
            anyway, and the ``dW_t`` product takes them besides ``x_0``
            (:mod:`~mtlcompress.runtime.task_domain`): they cost the token path's rate
            per unit (gather, GEMM rows, scatter) but not its fixed cost per call.
    """
    for name, value in (("token_density", token_density), ("weight_density", weight_density),
                        ("element_density", element_density)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")

    def weight(rows: int) -> float:
        return min(_weight_costs(timings, tokens=rows, in_features=in_features, out_features=out_features,
                                 weight_density=weight_density).values())

    macs = in_features * out_features
    changed_rows = math.ceil(token_density * tokens)
    nnz = (token_density if element_density is None else element_density) * tokens * in_features
    token = (timings.token.per_unit_s * changed_rows * macs + weight(tokens + changed_rows) if stacked
             else timings.token(changed_rows * macs) + weight(tokens))
    return {
        "dense": timings.dense(tokens * macs),
        "token": token,
        "element": timings.element(nnz * out_features) + weight(tokens),
    }


def choose_path(timings: KernelTimings, *, tokens: int, in_features: int, out_features: int,
                token_density: float, weight_density: float, element_density: float | None = None,
                stacked: bool = False) -> str:
    """The fastest way to run a sub-task's linear layer: ``"dense"``, ``"token"`` or ``"element"``.

    ``"dense"`` means run the layer plainly on ``x_t`` (no delta identity at all); the
    others mean :func:`~mtlcompress.runtime.kernels.delta_linear` with that path and
    the weight path from :func:`choose_weight_path`. Arguments as in
    :func:`estimate_path_costs`.
    """
    costs = estimate_path_costs(timings, tokens=tokens, in_features=in_features, out_features=out_features,
                                token_density=token_density, weight_density=weight_density,
                                element_density=element_density, stacked=stacked)
    return min(costs, key=costs.__getitem__)


# --------------------------------------------------------------------------------------
# Calibration.
# --------------------------------------------------------------------------------------
def _measure(fn: Callable[[], object], device: torch.device, repeats: int, evict: torch.Tensor) -> float:
    """Median seconds of ``fn`` after warm-up, each timed call after ``evict`` (a buffer
    larger than the caches) was read and written, with CUDA synchronisation around it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(_WARMUP):
        fn()
    samples = []
    for _ in range(repeats):
        evict.add_(1)  # read and write: plain writes may bypass the cache
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _fit_line(units: list[float], seconds: list[float], rows: list[float] | None = None) -> LinearCost:
    """Least squares in relative error (a call of 20 us priced 10 us off matters as much
    as one of 2 ms priced 1 ms off: choices compare calls of like size), every term
    non-negative and the cost per unit positive; a cost per row only if ``rows`` given."""
    x = np.asarray(units, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    columns = [np.ones_like(x), x] + ([np.asarray(rows, dtype=np.float64)] if rows is not None else [])
    design = np.stack(columns, axis=1) / np.maximum(y, 1e-12)[:, None]
    column_scale = np.maximum(np.abs(design).max(axis=0), 1e-300)  # units run to 1e8: keep nnls well conditioned
    coefficients = nnls(design / column_scale, np.ones_like(y))[0] / column_scale
    overhead, slope = float(coefficients[0]), float(coefficients[1])
    per_row = float(coefficients[2]) if rows is not None else 0.0
    if not slope > 0:  # flat or decreasing within noise: all overhead, tiny slope
        overhead, slope, per_row = float(y.mean()), float(y.mean() / max(x.max(), 1.0) * 1e-3), 0.0
    return LinearCost(overhead, slope, per_row)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} x{torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name (part of a timing cache key and of every benchmark record)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _random_mask(shape: tuple[int, ...], density: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen) < density


def calibrate(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
              in_features: int = 384, out_features: int = 1536, tokens: int = 197,
              repeats: int = 10) -> KernelTimings:
    """Time every path on synthetic data and fit one cost line per path.

    Defaults are ViT-S/16 fc1 at batch 1. ``repeats`` is capped at 50; with the
    defaults this takes a few seconds on a CPU. Every call is timed with cold caches
    (see ``_EVICT_BYTES``). Uses its own random generator, so the global RNG state is
    untouched.
    """
    device = torch.device(device)
    repeats = max(1, min(int(repeats), _MAX_REPEATS))
    gen = torch.Generator().manual_seed(0)

    def make(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    weight = make(out_features, in_features)
    x = make(tokens, in_features)
    macs = in_features * out_features
    evict = torch.zeros(_EVICT_BYTES // 4, dtype=torch.float32, device=device)

    def measure(fn: Callable[[], object]) -> float:
        return _measure(fn, device, repeats, evict)

    with torch.inference_mode():
        rows = sorted({max(1, round(f * tokens)) for f in _DENSE_ROW_FRACTIONS} | {r for r in _FEW_ROWS if r < tokens})
        dense = _fit_line([r * macs for r in rows],
                          [measure(lambda r=r: F.linear(x[:r], weight)) for r in rows])

        units, secs = [], []
        for density in _TOKEN_DENSITIES:
            mask = _random_mask((tokens,), density, gen).to(device)
            units.append(int(mask.sum()) * macs)
            secs.append(measure(lambda m=mask: kernels.token_sparse_linear(x, weight, m)))
        token = _fit_line(units, secs)

        units, secs = [], []
        for density in _ELEMENT_DENSITIES:
            mask = _random_mask((tokens, in_features), density, gen).to(device)
            dx = torch.where(mask, x, torch.zeros((), dtype=dtype, device=device))
            units.append(int(mask.sum()) * out_features)
            secs.append(measure(lambda d=dx: kernels.element_sparse_linear(d, weight)))
        element = _fit_line(units, secs)

        units, secs = [], []
        points = [(density, tokens) for density in _WEIGHT_DENSITIES] + [(0.02, r) for r in _FEW_ROWS if r < tokens]
        for density, count in points:
            mask = _random_mask((out_features, in_features), density, gen).to(device)
            dw = kernels.to_csr(torch.where(mask, weight, torch.zeros((), dtype=dtype, device=device)))
            units.append(int(mask.sum()) * count)
            secs.append(measure(lambda w=dw, c=count: kernels.sparse_delta_weight_matmul(x[:c], w)))
        sparse_weight = _fit_line(units, secs, rows=[count for _, count in points])

    return KernelTimings(
        dense=dense, token=token, element=element, sparse_weight=sparse_weight,
        device=device.type, dtype=str(dtype).removeprefix("torch."), device_name=_device_name(device),
        calibration_shape=(tokens, in_features, out_features),
    )


# --------------------------------------------------------------------------------------
# Persistence.
# --------------------------------------------------------------------------------------
def save_timings(timings: KernelTimings, path: str | os.PathLike) -> Path:
    """Write ``timings`` as versioned JSON (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(timings.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path


def load_timings(path: str | os.PathLike) -> KernelTimings:
    """Read timings written by :func:`save_timings`; raises ``MtlCompressError`` if unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MtlCompressError(f"no kernel-timings file at {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MtlCompressError(f"kernel-timings file {path} is not valid JSON; delete it to recalibrate") from exc
    if not isinstance(data, dict):
        raise MtlCompressError(f"kernel-timings file {path} does not hold a JSON object")
    return KernelTimings.from_dict(data)


def default_cache_path(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       shape: tuple[int, int, int] | None = None) -> Path:
    """``$MTLCOMPRESS_CACHE_DIR`` (default ``~/.cache/mtlcompress``) / a file keyed by
    device name, thread count (CPU), dtype, torch version and, if given, the layer
    shape ``(in_features, out_features, tokens)`` it was calibrated on."""
    device = torch.device(device)
    root = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mtlcompress")
    key = f"{_device_name(device)}-{str(dtype).removeprefix('torch.')}-torch{torch.__version__}"
    if shape is not None:
        key += "-{}x{}x{}".format(*shape)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")
    return root / f"kernel-timings-{slug}.json"


def load_or_calibrate(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                      cache_path: str | os.PathLike | None = None, recalibrate: bool = False,
                      **calibrate_kwargs: int) -> KernelTimings:
    """Cached timings for this machine, calibrating (and caching) when missing or unusable.

    With a layer shape in ``calibrate_kwargs`` (``in_features``, ``out_features``,
    ``tokens``) the cache is per shape; a machine-wide file (no shape) stands in for
    shapes that were never calibrated on their own.
    """
    shape_keys = ("in_features", "out_features", "tokens")
    shape = tuple(calibrate_kwargs[k] for k in shape_keys) if all(k in calibrate_kwargs for k in shape_keys) else None
    path = Path(cache_path) if cache_path is not None else default_cache_path(device, dtype, shape)
    candidates = [path] if cache_path is not None or shape is None else [path, default_cache_path(device, dtype)]
    for candidate in candidates if not recalibrate else []:
        if candidate.exists():
            try:
                return load_timings(candidate)
            except MtlCompressError:
                pass  # stale or corrupt cache: recalibrate below and overwrite it
    timings = calibrate(device, dtype, **calibrate_kwargs)
    save_timings(timings, path)
    return timings
