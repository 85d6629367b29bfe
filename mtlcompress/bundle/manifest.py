"""The bundle manifest's schema: every field's type and range, and the rules that tie
fields to each other. Tensors are checked later, against the model the manifest
describes (``bundle.format``).

A checker gets a value and its dotted location, and raises ``SchemaError``.
"""

from __future__ import annotations

from typing import Any, Callable

from mtlcompress.bundle import layouts
from mtlcompress.errors import MtlCompressError
from mtlcompress.models.activation_sparsity import GRANULARITIES
from mtlcompress.tasks.registry import get_task

FORMAT_VERSION = 1

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


_DELTA_ENTRY = _record({"layout": _one_of(layouts.LAYOUTS), "shape": _list_of(_count),
                        "dtype": _one_of(tuple(layouts.DTYPE_NAMES)), "nnz": _count, "bytes": _count})
_TASK_ENTRY = _record({
    "checkpoint": _record({
        "task": _task_name, "backbone": _json_object,
        "head": _record({"type": _text, "out_channels": _positive, "hidden": _positive}, optional=("type",)),
        "num_classes": _optional(_positive), "class_names": _list_of(_text), "training": _json_object,
        "metrics": _json_object, "sparsity": _json_object, "mtlcompress_version": _text,
    }, optional=("mtlcompress_version",)),
    "activation": _record({"granularity": _one_of(GRANULARITIES), "task_thresholds": _dict_of(_number),
                           "temporal_thresholds": _dict_of(_number)}),
    "provenance": _json_object,
    "delta_density": _number,
    "delta": _dict_of(_DELTA_ENTRY),
})
_MANIFEST = _record({
    "format_version": _positive, "mtlcompress_version": _text, "backbone": _json_object,
    "base_task": _task_name, "task_order": _list_of(_task_name, unique=True),
    "tasks": _dict_of(_TASK_ENTRY), "payload_sha256": _sha256, "manifest_sha256": _sha256,
})


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
            dtype = layouts.str_to_dtype(delta["dtype"])
            if delta["bytes"] != layouts.layout_nbytes(delta["shape"], dtype, delta["nnz"], delta["layout"]):
                raise SchemaError(f"{where}.bytes", f"is {delta['bytes']}, which does not fit its layout")
