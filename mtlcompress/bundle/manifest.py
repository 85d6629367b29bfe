"""The bundle manifest's schema: every field's type and range, and the rules that tie
fields to each other. Tensors are checked later, against the model the manifest
describes (``bundle.format``).

A checker gets a value and its dotted location, and raises ``SchemaError``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mtlcompress.bundle import layouts
from mtlcompress.errors import MtlCompressError
from mtlcompress.models.activation_sparsity import GRANULARITIES, ActivationSparsity
from mtlcompress.models.backbone import MAX_DEPTH, BackboneConfig, check_int_range
from mtlcompress.models.heads import (
    MAX_HEAD_CHANNELS,
    head_layers_from_dict,
    head_module_from_dict,
    head_sizes_from_dict,
    head_type_from_dict,
)
from mtlcompress.tasks.registry import get_task

FORMAT_VERSION = 1
DEFAULT_DTYPE = "float32"  # the weights' dtype of a manifest without "dtype" (written before half precision)

# A checker gets a value and its dotted location, and raises SchemaError.


class SchemaError(Exception):
    """One manifest field that breaks the schema; the message names the field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"manifest field '{where}' {problem}")


_Check = Callable[[Any, str], None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, where: str) -> None:
    if not _is_int(value) or value < 0:
        raise SchemaError(where, f"must be a non-negative integer, got {value!r:.40}")


def _positive(value: Any, where: str) -> None:
    if not _is_int(value) or value <= 0:
        raise SchemaError(where, f"must be a positive integer, got {value!r:.40}")


def _number(value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise SchemaError(where, f"must be a number, got {value!r:.40}")


def _fraction(value: Any, where: str) -> None:
    _number(value, where)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise SchemaError(where, f"must be a number in [0, 1], got {value!r:.40}")


def _text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise SchemaError(where, f"must be a string, got {value!r:.40}")


def _sha256(value: Any, where: str) -> None:
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        raise SchemaError(where, "must be 64 lowercase hex digits")


def _json_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(where, f"must be a JSON object, got {type(value).__name__}")


def _task_name(value: Any, where: str) -> None:
    _text(value, where)
    try:
        get_task(value)
    except MtlCompressError as exc:
        raise SchemaError(where, f"names {exc}") from None


def _checked_by(validate: Callable[[Any], Any]) -> _Check:
    """A field whose type and range belong to the model code: the same validator
    checkpoints go through, so a number is never checked two ways."""
    def check(value: Any, where: str) -> None:
        try:
            validate(value)
        except MtlCompressError as exc:
            raise SchemaError(where, f"is invalid: {exc}") from None
    return check


def _any(value: Any, where: str) -> None:
    """A key that must be present; its value is checked by the record's own validator."""


def _all_of(*checks: _Check) -> _Check:
    def check_all(value: Any, where: str) -> None:
        for check in checks:
            check(value, where)
    return check_all


def _one_of(choices: tuple[str, ...]) -> _Check:
    def check(value: Any, where: str) -> None:
        if value not in choices:
            raise SchemaError(where, f"must be one of {', '.join(choices)}, got {value!r:.40}")
    return check


def _optional(check: _Check) -> _Check:
    def optional(value: Any, where: str) -> None:
        if value is not None:
            check(value, where)
    return optional


def _list_of(check: _Check, unique: bool = False) -> _Check:
    def check_list(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise SchemaError(where, f"must be a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check(item, f"{where}[{i}]")
        if unique and len(set(map(str, value))) != len(value):
            raise SchemaError(where, "has duplicate entries")
    return check_list


def _dict_of(check: _Check) -> _Check:
    def check_dict(value: Any, where: str) -> None:
        _json_object(value, where)
        for key, item in value.items():
            check(item, f"{where}.{key}")
    return check_dict


def _record(fields: dict[str, _Check], optional: tuple[str, ...] = ()) -> _Check:
    """An object with exactly these keys (those in ``optional`` may be absent)."""
    def check_record(value: Any, where: str) -> None:
        _json_object(value, where)
        missing = sorted(set(fields) - set(value) - set(optional))
        unknown = sorted(set(value) - set(fields))
        if missing:
            raise SchemaError(where, f"is missing the key '{missing[0]}'")
        if unknown:
            raise SchemaError(where, f"has the unknown key '{unknown[0]:.40}'")
        for key, check in fields.items():
            if key in value:
                check(value[key], f"{where}.{key}" if where else key)
    return check_record


_BACKBONE = _checked_by(BackboneConfig.from_dict)
_HEAD = _all_of(_record({"type": _any, "out_channels": _any, "hidden": _any, "layers": _any, "module": _any},
                        optional=("type", "layers", "module")),
                _checked_by(head_sizes_from_dict), _checked_by(head_type_from_dict),
                _checked_by(lambda head: head_layers_from_dict(head, MAX_DEPTH)),
                _checked_by(head_module_from_dict))
_NUM_CLASSES = _checked_by(lambda n: check_int_range("num_classes", n, 1, MAX_HEAD_CHANNELS))
_ACTIVATION = _all_of(_record({"granularity": _one_of(GRANULARITIES), "task_thresholds": _any,
                               "temporal_thresholds": _any}), _checked_by(ActivationSparsity.from_dict))
_DELTA_ENTRY = _record({"layout": _one_of(layouts.ALL_LAYOUTS), "shape": _list_of(_count),
                        "dtype": _one_of(tuple(layouts.DTYPE_NAMES)), "nnz": _count, "bytes": _count})
_TASK_ENTRY = _record({
    "checkpoint": _record({
        "task": _task_name, "backbone": _BACKBONE, "head": _HEAD,
        "num_classes": _optional(_NUM_CLASSES), "class_names": _list_of(_text), "training": _json_object,
        "metrics": _dict_of(_number), "sparsity": _json_object, "mtlcompress_version": _text,
    }, optional=("mtlcompress_version",)),
    "activation": _ACTIVATION,
    "provenance": _json_object,
    "delta_density": _fraction,
    "delta": _dict_of(_DELTA_ENTRY),
})
_MANIFEST = _record({
    "format_version": _positive, "mtlcompress_version": _text, "backbone": _BACKBONE,
    "dtype": _one_of(tuple(layouts.DTYPE_NAMES)),
    "base_task": _task_name, "task_order": _list_of(_task_name, unique=True),
    "tasks": _dict_of(_TASK_ENTRY), "payload_sha256": _sha256, "manifest_sha256": _sha256,
}, optional=("dtype",))


def validate_manifest(manifest: Any) -> None:
    """Raise ``SchemaError`` unless ``manifest`` has the version-1 structure and
    its fields agree with each other (tensors are checked later, against the model)."""
    _MANIFEST(manifest, "")
    if manifest["format_version"] != FORMAT_VERSION:
        raise SchemaError("format_version", f"is {manifest['format_version']}, the container says {FORMAT_VERSION}")
    order, tasks = manifest["task_order"], manifest["tasks"]
    if set(order) != set(tasks):
        raise SchemaError("task_order", f"lists {sorted(order)} but 'tasks' has {sorted(tasks)}")
    if manifest["base_task"] not in tasks:
        raise SchemaError("base_task", f"'{manifest['base_task']}' is not among the tasks ({', '.join(order)})")
    for task, entry in tasks.items():
        if entry["checkpoint"]["task"] != task:
            raise SchemaError(f"tasks.{task}.checkpoint.task", f"is '{entry['checkpoint']['task']}'")
        if task == manifest["base_task"] and entry["delta"]:
            raise SchemaError(f"tasks.{task}.delta", "must be empty for the base task")
        for name, delta in entry["delta"].items():
            where = f"tasks.{task}.delta.{name}"
            if delta["nnz"] == 0:
                raise SchemaError(f"{where}.nnz", "is 0 (all-zero deltas are never stored)")
            numel = 1
            for dim in delta["shape"]:
                numel *= dim
            if delta["nnz"] > numel:
                raise SchemaError(f"{where}.nnz", f"is {delta['nnz']}, more than the {numel} entries of the tensor")
            if delta["dtype"] != manifest.get("dtype", DEFAULT_DTYPE):
                raise SchemaError(f"{where}.dtype", f"is {delta['dtype']}, the bundle's dtype is "
                                                    f"{manifest.get('dtype', DEFAULT_DTYPE)}")
            dtype = layouts.str_to_dtype(delta["dtype"])
            if not layouts.nbytes_fit(delta["shape"], dtype, delta["nnz"], delta["layout"], delta["bytes"]):
                raise SchemaError(f"{where}.bytes", f"is {delta['bytes']}, which does not fit its layout")
