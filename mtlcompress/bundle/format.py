"""The bundle file: one safetensors file in our container (format ``mtlcompress.bundle``).

Tensors (nothing is pickled):

* ``base.<name>``: the base backbone, dense;
* ``delta.<task>.<name>.<part>``: each sub-task's non-zero weight deltas, each in the
  smallest layout of ``bundle.layouts`` (all-zero deltas are not stored);
* ``head.<task>.<name>``: every task head, dense.

The container document is the manifest: backbone config, base task, task order, per
task its checkpoint metadata, activation thresholds, provenance, delta density and
one entry per stored delta (layout, shape, dtype, nnz, bytes), plus ``payload_sha256``
over every tensor and ``manifest_sha256`` over the rest of the manifest.

Loading trusts nothing: it checks the container, validates the manifest against an
explicit schema, verifies both checksums, then every tensor name, shape and sparse
part, and raises :class:`~mtlcompress.errors.BundleError` with one line on any
problem. A loaded bundle is bit-identical to the one saved.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from mtlcompress.bundle import layouts
from mtlcompress.bundle.bundle import Bundle, BundleTask
from mtlcompress.bundle.checksums import manifest_sha256, payload_sha256
from mtlcompress.bundle.manifest import DEFAULT_DTYPE, FORMAT_VERSION, SchemaError, validate_manifest
from mtlcompress.errors import BundleError, MtlCompressError
from mtlcompress.io.container import (
    check_tensor_names,
    read_container_header,
    read_container_shapes,
    read_container_tensors,
    write_container,
)
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.models.backbone import BackboneConfig, backbone_signature, backbone_tensor_shapes
from mtlcompress.models.checkpoint import FORMAT_NAME as CHECKPOINT_FORMAT_NAME
from mtlcompress.models.checkpoint import CheckpointInfo, head_tensor_shapes
from mtlcompress.version import __version__

FORMAT_NAME = "mtlcompress.bundle"
SHORT_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype / --precision
SUPPORTED_VERSIONS = (1,)

_CORRUPT = "the file is damaged or was edited; re-export it with `mtlcompress export`"
_NOT_WRITTEN = "no bundle was written (every output would be NaN); check the source checkpoints"

# ------------------------------------------------------------------------ save


def save_bundle(bundle: Bundle, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``bundle`` to ``path`` atomically and return its manifest.

    Each sub-task's delta is stored in the layout (dense, bitmask, CSR, COO) that
    takes the fewest bytes, with checksums that ``load_bundle`` verifies.

    Args:
        bundle: the bundle to write.
        path: the file; an interrupted write leaves no partial file.

    Returns:
        The manifest written into the file's metadata (docs/formats.md).
    """
    path = Path(path)
    if bundle.base_task not in bundle.tasks:
        raise BundleError(f"{path}: base task '{bundle.base_task}' is not among the tasks ({', '.join(bundle.tasks)})")
    base_weights = bundle.base_weights
    for name, w in base_weights.items():
        _check_finite(path, f"base.{name}", w, _NOT_WRITTEN)
    dtype = bundle.dtype  # one per bundle: what the manifest's "dtype" promises a reader
    weights = {**{f"base.{n}": w for n, w in base_weights.items()},
               **{f"head.{t}.{n}": h for t, entry in bundle.tasks.items() for n, h in entry.head.items()}}
    for name, w in weights.items():
        if w.dtype != dtype:
            raise BundleError(f"{path}: tensor '{name}' is {w.dtype}, the bundle's weights are {dtype}; "
                              f"use Bundle.cast to store another dtype")
    tensors: dict[str, torch.Tensor] = {f"base.{name}": w for name, w in base_weights.items()}
    total = sum(w.numel() for w in base_weights.values())
    tasks: dict[str, Any] = {}
    for task, entry in bundle.tasks.items():
        if task == bundle.base_task and any(bool(d.any()) for d in entry.delta.values()):
            raise BundleError(f"{path}: the base task '{task}' has a non-zero weight delta; it must have none")
        deltas: dict[str, Any] = {}
        for name, delta in entry.delta.items():
            if name not in base_weights or tuple(delta.shape) != tuple(base_weights[name].shape):
                raise BundleError(f"{path}: task '{task}' has a delta '{name}' that matches no base weight")
            if delta.dtype != base_weights[name].dtype:
                raise BundleError(f"{path}: task '{task}' delta '{name}' is {delta.dtype}, "
                                  f"the base weight is {base_weights[name].dtype}")
            nnz = int(torch.count_nonzero(delta))
            if nnz == 0:
                continue
            _check_finite(path, f"delta.{task}.{name}", delta, _NOT_WRITTEN)
            _check_finite(path, f"base.{name} + delta.{task}.{name}", base_weights[name] + delta, _NOT_WRITTEN)
            encoded = layouts.encode(delta.detach().cpu(), "auto")
            tensors.update(layouts.encoded_to_state(f"delta.{task}.{name}", encoded))
            deltas[name] = {"layout": encoded.layout, "shape": list(encoded.shape),
                            "dtype": layouts.dtype_to_str(encoded.dtype), "nnz": nnz, "bytes": encoded.nbytes}
        for name, h in entry.head.items():
            _check_finite(path, f"head.{task}.{name}", h, _NOT_WRITTEN)
        tensors.update({f"head.{task}.{name}": h for name, h in entry.head.items()})
        tasks[task] = {
            "checkpoint": entry.info.to_document(),
            "activation": entry.activation.to_dict(),
            "provenance": entry.provenance,
            "delta_density": _density(deltas, total),
            "delta": deltas,
        }
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "mtlcompress_version": __version__,
        "backbone": bundle.backbone.to_dict(),
        "dtype": layouts.dtype_to_str(dtype),
        "base_task": bundle.base_task,
        "task_order": list(bundle.tasks),
        "tasks": tasks,
        "payload_sha256": payload_sha256(tensors),
    }
    try:
        manifest["manifest_sha256"] = manifest_sha256(manifest)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path}: task metadata or provenance is not plain JSON ({exc})") from None
    write_container(path, tensors, format_name=FORMAT_NAME, version=FORMAT_VERSION, document=manifest)
    return manifest


def _density(deltas: Mapping[str, Mapping[str, Any]], total: int) -> float:
    """One formula for writer and reader, so the manifest can be checked exactly."""
    return sum(entry["nnz"] for entry in deltas.values()) / total if total else 0.0


# ------------------------------------------------------------------------ load


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and fully verify a bundle file; every problem raises one-line ``BundleError``.

    Order matters: every manifest number is validated first, then the header's tensor
    shapes are compared with the architecture (built on the meta device), and only then
    is tensor data read, so a file that claims a huge model costs nothing to refuse.

    Args:
        path: a bundle written by ``save_bundle`` or ``export_bundle``.

    Raises:
        BundleError: one line naming the problem (version, checksum, number, shape, index).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    try:
        validate_manifest(manifest)
    except (SchemaError, MtlCompressError) as exc:
        raise BundleError(f"{path}: {exc}; {_CORRUPT}") from None
    if manifest_sha256(manifest) != manifest["manifest_sha256"]:
        raise BundleError(f"{path}: manifest checksum mismatch; {_CORRUPT}")
    backbone = BackboneConfig.from_dict(manifest["backbone"])  # validated above
    infos = _task_infos(path, manifest, backbone)
    backbone_shapes = backbone_tensor_shapes(backbone)  # meta device: no memory, whatever the manifest claims
    expected = _expected_shapes(path, manifest, backbone_shapes, infos)
    header = _guarded(path, "not a readable safetensors file", lambda: read_container_shapes(path, error=BundleError))
    check_tensor_names(expected, header, path, error=BundleError, hint=f"; {_CORRUPT}")
    for name, shape in header.items():
        if not name.startswith("delta.") and tuple(shape) != expected[name]:  # delta parts: the layout decoder
            raise BundleError(f"{path}: tensor '{name}' has shape {tuple(shape)}, the manifest's architecture "
                              f"needs {expected[name]}; {_CORRUPT}")
    state = _guarded(path, "tensor data is truncated or corrupt",
                     lambda: read_container_tensors(path, error=BundleError))
    if payload_sha256(state) != manifest["payload_sha256"]:
        raise BundleError(f"{path}: payload checksum mismatch (tensor bytes changed); {_CORRUPT}")
    return _build(path, manifest, backbone, list(backbone_shapes), infos, state)


def _guarded(path: Path, what: str, read: Callable[[], Any]) -> Any:
    """Run a safetensors read; anything it throws (a Rust panic included) -> BundleError."""
    try:
        return read()
    except BundleError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise BundleError(f"{path}: {what} ({first})") from None


def _read_manifest(path: Path) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        _, document = read_container_header(path, format_name=FORMAT_NAME, versions=SUPPORTED_VERSIONS,
                                            error=BundleError)
        return document

    try:
        return _guarded(path, "not a readable safetensors file", read)
    except BundleError as exc:
        version = _declared_version(path)
        if version is not None and version > max(SUPPORTED_VERSIONS):
            raise BundleError(f"{path}: bundle format version {version} was made by a newer mtlcompress "
                              f"(this one reads {', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade mtlcompress") from None
        if f"'{CHECKPOINT_FORMAT_NAME}'" in str(exc):
            raise BundleError(f"{exc} (a single-task checkpoint; combine checkpoints into a bundle with "
                              f"`mtlcompress export`)") from None
        raise


def _declared_version(path: Path) -> int | None:
    """The version a bundle file claims, or None; only used to explain a refusal."""
    from safetensors import safe_open

    def read() -> int | None:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT_NAME:
            return None
        return int(metadata.get("format_version", ""))

    try:
        return _guarded(path, "", read)
    except BundleError:
        return None


def _task_infos(path: Path, manifest: dict[str, Any], backbone: BackboneConfig) -> dict[str, CheckpointInfo]:
    infos: dict[str, CheckpointInfo] = {}
    for task in manifest["task_order"]:
        doc = manifest["tasks"][task]["checkpoint"]
        try:
            infos[task] = CheckpointInfo.from_document(doc, path)
        except MtlCompressError as exc:
            raise BundleError(f"{exc} (manifest 'tasks.{task}.checkpoint'); {_CORRUPT}") from None
        if backbone_signature(infos[task].backbone) != backbone_signature(backbone):
            raise BundleError(f"{path}: task '{task}' has backbone {infos[task].backbone.describe()}, the bundle "
                              f"{backbone.describe()}; {_CORRUPT}")
    return infos


def _expected_shapes(path: Path, manifest: dict[str, Any], backbone_shapes: Mapping[str, tuple[int, ...]],
                     infos: Mapping[str, CheckpointInfo]) -> dict[str, tuple[int, ...]]:
    """Every tensor the manifest's architecture needs -> its shape (``()`` for a sparse
    delta's parts, whose shapes only the layout decoder knows)."""
    expected: dict[str, tuple[int, ...]] = {f"base.{n}": s for n, s in backbone_shapes.items()}
    for task in manifest["task_order"]:
        expected.update({f"head.{task}.{n}": s for n, s in head_tensor_shapes(infos[task]).items()})
        for name, entry in manifest["tasks"][task]["delta"].items():
            if name not in backbone_shapes:
                raise BundleError(f"{path}: task '{task}' has a delta for '{name}', which the backbone does not "
                                  f"have; {_CORRUPT}")
            if tuple(entry["shape"]) != backbone_shapes[name]:
                raise BundleError(f"{path}: task '{task}' delta '{name}' declares shape {tuple(entry['shape'])}, "
                                  f"the backbone weight is {backbone_shapes[name]}; {_CORRUPT}")
            expected.update({f"delta.{task}.{name}.{part}": () for part in layouts.part_names(entry["layout"])})
    return expected


def _check_finite(path: Path, name: str, tensor: torch.Tensor, hint: str) -> None:
    """One NaN or Inf weight turns every output into NaN: refuse it, naming the tensor."""
    if not bool(torch.isfinite(tensor).all()):
        raise BundleError(f"{path}: tensor '{name}' holds NaN or Inf; {hint}")


def _build(path: Path, manifest: dict[str, Any], backbone: BackboneConfig, weight_names: Sequence[str],
           infos: Mapping[str, CheckpointInfo], state: dict[str, torch.Tensor]) -> Bundle:
    """Check every tensor's dtype and values; decode the deltas; assemble the Bundle."""
    dtype_name = manifest.get("dtype", DEFAULT_DTYPE)
    for name, tensor in state.items():
        if name.startswith("delta."):
            continue  # parts: checked by the layout decoder below
        if tensor.dtype != layouts.DTYPE_NAMES[dtype_name]:
            raise BundleError(f"{path}: tensor '{name}' is {str(tensor.dtype).removeprefix('torch.')}, the "
                              f"manifest's dtype is {dtype_name}; {_CORRUPT}")
        _check_finite(path, name, tensor, _CORRUPT)

    base_weights = {n: state[f"base.{n}"] for n in weight_names}  # the model's order
    tasks: dict[str, BundleTask] = {}
    for task in manifest["task_order"]:
        entry = manifest["tasks"][task]
        delta = {}
        for name in base_weights:  # base order, like Bundle.from_checkpoints
            if name in entry["delta"]:
                delta[name] = _decode_delta(path, task, name, entry["delta"][name], base_weights[name], state)
        if entry["delta_density"] != _density(entry["delta"], sum(w.numel() for w in base_weights.values())):
            raise BundleError(f"{path}: task '{task}' delta_density disagrees with its deltas; {_CORRUPT}")
        heads = {n: state[f"head.{task}.{n}"] for n in head_tensor_shapes(infos[task])}
        tasks[task] = BundleTask(
            info=infos[task],
            head=heads,
            delta=delta,
            activation=ActivationSparsity.from_dict(entry["activation"]),  # validated with the manifest
            provenance=entry["provenance"],
        )
    return Bundle(backbone=backbone, base_task=manifest["base_task"], base_weights=base_weights, tasks=tasks)


def _decode_delta(path: Path, task: str, name: str, entry: Mapping[str, Any], base: torch.Tensor,
                  state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    key = f"delta.{task}.{name}"
    dtype = layouts.str_to_dtype(entry["dtype"])
    if dtype != base.dtype:
        raise BundleError(f"{path}: tensor '{key}' is {entry['dtype']} but its base weight is {base.dtype}; {_CORRUPT}")
    try:
        delta = layouts.decode_parts(entry["layout"], entry["shape"], dtype,
                                     {part: state[f"{key}.{part}"] for part in layouts.part_names(entry["layout"])})
    except BundleError as exc:
        raise BundleError(f"{path}: tensor '{key}': {exc}; {_CORRUPT}") from None
    nnz = int(torch.count_nonzero(delta))
    if nnz != entry["nnz"]:
        raise BundleError(f"{path}: tensor '{key}' has {nnz} non-zeros, the manifest says {entry['nnz']}; {_CORRUPT}")
    _check_finite(path, key, delta, _CORRUPT)
    _check_finite(path, f"base.{name} + {key}", base + delta, _CORRUPT)  # finite parts can still overflow
    return delta


# ---------------------------------------------------------------------- export


def export_bundle(base: str | os.PathLike, tasks: Sequence[str | os.PathLike], out: str | os.PathLike,
                  dtype: str = DEFAULT_DTYPE) -> dict[str, Any]:
    """Build a bundle from checkpoints, save it to ``out`` and return its size summary.

    Args:
        base: the base task's checkpoint (its backbone is stored dense).
        tasks: the sub-tasks' checkpoints (sparsified or not; ``base`` is skipped if listed).
        out: the bundle file.
        dtype: the stored weights' dtype, ``float32``, ``bfloat16`` or ``float16`` (or
            ``fp32``/``bf16``/``fp16``): base, deltas and heads alike (``Bundle.cast``);
            activation thresholds and metadata stay exact JSON numbers.

    Returns:
        Per task the delta density, delta bytes, head bytes and layout counts, and
        totals comparing the bundle file with the source checkpoint files.
    """
    bundle = Bundle.from_checkpoints(base, tasks).cast(storage_dtype(dtype))
    manifest = save_bundle(bundle, out)
    return summarize_bundle(bundle, manifest, out)


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype a bundle dtype name stands for (manifest or short name)."""
    full = SHORT_DTYPE_NAMES.get(name, name)
    if full not in layouts.DTYPE_NAMES:
        raise BundleError(f"unknown bundle dtype '{name}'; choose from {', '.join(SHORT_DTYPE_NAMES)}")
    return layouts.DTYPE_NAMES[full]


def summarize_bundle(bundle: Bundle, manifest: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Sizes of a saved bundle, per task and against its source checkpoints."""
    rows = []
    for task in manifest["task_order"]:
        entry = manifest["tasks"][task]
        rows.append({
            "task": task,
            "role": "base" if task == manifest["base_task"] else "sub-task",
            "delta_density": entry["delta_density"],
            "delta_bytes": sum(d["bytes"] for d in entry["delta"].values()),
            "head_bytes": sum(h.numel() * h.element_size() for h in bundle.task(task).head.values()),
            "layouts": dict(sorted(Counter(d["layout"] for d in entry["delta"].values()).items())),
        })
    sources = {task: Path(bundle.task(task).provenance.get("path", "")) for task in manifest["task_order"]}
    source_bytes = {task: p.stat().st_size for task, p in sources.items() if p.is_file()}
    bundle_bytes = Path(path).stat().st_size
    base_bytes = source_bytes.get(manifest["base_task"])
    total_sources = sum(source_bytes.values())
    return {
        "bundle": str(path),
        "base_task": manifest["base_task"],
        "dtype": manifest["dtype"],
        "tasks": rows,
        "totals": {
            "bundle_bytes": bundle_bytes,
            "base_weight_bytes": sum(w.numel() * w.element_size() for w in bundle.base_weights.values()),
            "source_checkpoints": len(source_bytes),
            "source_bytes": total_sources,
            "one_checkpoint_bytes": base_bytes,
            "ratio_vs_sources": bundle_bytes / total_sources if total_sources else None,
            "ratio_vs_one_checkpoint": bundle_bytes / base_bytes if base_bytes else None,
        },
    }
