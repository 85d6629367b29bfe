"""Calibration of the cost model (:mod:`~mtlcompress.runtime.cost_model`) on this
machine: time every kernel path on synthetic operands with cold caches, fit each
path's cost line, and cache the result as versioned JSON per device, dtype, torch
version and layer shape.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from mtlcompress.errors import MtlCompressError
from mtlcompress.progress import progress_bar, progress_bars_enabled
from mtlcompress.runtime import kernels
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

__all__ = ["CACHE_DIR_ENV", "calibrate", "cpu_model", "default_cache_path", "load_or_calibrate", "load_timings",
           "save_timings"]

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
              repeats: int = 10, show_progress: bool | None = None) -> KernelTimings:
    """Time every path on synthetic data and fit one cost line per path.

    Defaults are ViT-S/16 fc1 at batch 1. ``repeats`` is capped at 50; with the
    defaults this takes a few seconds on a CPU. Every call is timed with cold caches
    (see ``_EVICT_BYTES``). Uses its own random generator, so the global RNG state is
    untouched. Progress goes to stderr unless ``show_progress`` is False (``None``:
    the process-wide switch of ``mtlcompress.progress``).
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

    rows = sorted({max(1, round(f * tokens)) for f in _DENSE_ROW_FRACTIONS} | {r for r in _FEW_ROWS if r < tokens})
    points = [(density, tokens) for density in _WEIGHT_DENSITIES] + [(0.02, r) for r in _FEW_ROWS if r < tokens]
    calls = len(rows) + len(_TOKEN_DENSITIES) + len(_ELEMENT_DENSITIES) + len(points)
    enabled = progress_bars_enabled() if show_progress is None else show_progress

    with torch.inference_mode(), progress_bar(f"calibrating kernels for {in_features}x{out_features} layers "
                                              "(first run only)", calls, enabled=enabled) as advance:
        def measure(fn: Callable[[], object]) -> float:
            seconds = _measure(fn, device, repeats, evict)
            advance(1)
            return seconds

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
