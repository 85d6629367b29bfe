"""A small per-machine cost model that picks the fastest way to run each delta layer.

Whether the delta identity ``y_t = y_0 + dW_t x_0 + W_t dx + db_t`` is faster than just
running the layer depends on the machine: at ViT sequence lengths (~200 tokens) the
fixed overhead of gather/scatter or sparse kernels can eat the saved FLOPs. So every
path gets a two-number linear model, ``seconds = overhead_s + per_unit_s * units``
(the CSR weight-delta product a third, per row), fitted once per machine on cold
caches and cached as versioned JSON (:mod:`~mtlcompress.runtime.calibration`).

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

import math
from dataclasses import asdict, dataclass, field

import torch

from mtlcompress.errors import MtlCompressError

__all__ = [
    "TIMINGS_FORMAT",
    "TIMINGS_VERSION",
    "LinearCost",
    "KernelTimings",
    "estimate_path_costs",
    "choose_path",
    "choose_weight_path",
    "choose_stacking",
]

TIMINGS_FORMAT = "mtlcompress.kernel_timings"
# 2: sparse_weight fitted over row counts too; 3: timed on int32-index CSR (kernels.to_csr);
# 4: timed with cold caches, fitted in relative error, a cost per row for the CSR product;
# 5: the CSR product writes over an empty result (kernels.sparse_dense_matmul), no zero fill
TIMINGS_VERSION = 5
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
                  weight_density: float, structured: bool = False) -> dict[str, float]:
    if weight_density <= 0:
        return {"none": 0.0}
    if structured:  # dense GEMMs on gathered blocks or thin factors: the token path's rate
        return {"structured": timings.token(weight_density * tokens * in_features * out_features)}
    nnz = weight_density * in_features * out_features
    return {
        "sparse": timings.sparse_weight(nnz * tokens, rows=tokens),
        "dense": timings.dense(tokens * in_features * out_features),
    }


def choose_weight_path(timings: KernelTimings, *, tokens: int, in_features: int, out_features: int,
                       weight_density: float, structured: bool = False) -> str:
    """How to compute ``dW_t x_0``: ``"none"`` (density 0), ``"sparse"`` (CSR), ``"dense"``
    or, for a structured delta, ``"structured"``.

    ``tokens`` is the total number of rows (batch x sequence length). For a structured
    delta ``weight_density`` is its multiply-adds per row over ``in * out``.
    """
    costs = _weight_costs(timings, tokens=tokens, in_features=in_features, out_features=out_features,
                          weight_density=weight_density, structured=structured)
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
                        element_density: float | None = None, stacked: bool = False,
                        structured: bool = False) -> dict[str, float]:
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
        structured: ``dW_t`` is structured (blocks or low rank; ``weight_density`` is then
            its multiply-adds over ``in * out``) and runs as dense GEMMs.
    """
    for name, value in (("token_density", token_density), ("weight_density", weight_density),
                        ("element_density", element_density)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")

    def weight(rows: int) -> float:
        return min(_weight_costs(timings, tokens=rows, in_features=in_features, out_features=out_features,
                                 weight_density=weight_density, structured=structured).values())

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
                stacked: bool = False, structured: bool = False) -> str:
    """The fastest way to run a sub-task's linear layer: ``"dense"``, ``"token"`` or ``"element"``.

    ``"dense"`` means run the layer plainly on ``x_t`` (no delta identity at all); the
    others mean :func:`~mtlcompress.runtime.kernels.delta_linear` with that path and
    the weight path from :func:`choose_weight_path`. Arguments as in
    :func:`estimate_path_costs`.
    """
    costs = estimate_path_costs(timings, tokens=tokens, in_features=in_features, out_features=out_features,
                                token_density=token_density, weight_density=weight_density,
                                element_density=element_density, stacked=stacked, structured=structured)
    return min(costs, key=costs.__getitem__)
