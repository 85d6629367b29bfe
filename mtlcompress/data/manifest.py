"""The scenes layout's ``manifest.json`` and class lists: which tasks a folder holds and
the class names of its categorical tasks.

In a manifest, semseg classes go in ``class_names`` / ``num_classes`` and those of any
other categorical task ``<task>`` in ``<task>_class_names`` / ``<task>_num_classes``
(``parts_class_names`` ...); ``class_names`` and ``num_classes`` may also be dicts keyed
by task. Without a manifest, class lists come from ``ROOT/classes.txt`` (semseg) and
``ROOT/<task>_classes.txt`` (``parts_classes.txt`` ...), one class name per line, ids
counted from 0. The number of classes is never guessed from the largest label seen: a
split that misses the rarest class would silently shrink the model's head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mtlcompress.data.base import IGNORE_INDEX
from mtlcompress.errors import DataError
from mtlcompress.tasks.registry import task_names

SCENES_FORMAT = "mtlcompress.scenes"
SCENES_VERSION = 1


def find_manifest(meta_dirs: Sequence[Path]) -> tuple[Path, dict] | None:
    """The first ``manifest.json`` in ``meta_dirs``, read and checked, or None."""
    for folder in meta_dirs:
        path = folder / "manifest.json"
        if path.is_file():
            return path, read_manifest(path)
    return None


def read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc}): fix the JSON or delete the manifest") from None
    if not isinstance(data, dict) or data.get("format") != SCENES_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise DataError(f"{path} is not a {SCENES_FORMAT} manifest (format {found!r}): "
                        f"set \"format\": \"{SCENES_FORMAT}\" or delete it")
    if data.get("version") != SCENES_VERSION:
        raise DataError(f"{path} has version {data.get('version')!r} but this mtlcompress reads version "
                        f"{SCENES_VERSION}: upgrade mtlcompress or regenerate the dataset")
    return data


def manifest_tasks(manifest: tuple[Path, dict]) -> tuple[str, ...]:
    path, data = manifest
    known = task_names()
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise DataError(f"{path} needs a \"tasks\" list of task names (from {', '.join(known)})")
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise DataError(f"{path} lists unknown task {unknown[0]!r}: known tasks are {', '.join(known)}")
    return tuple(dict.fromkeys(tasks))


def class_list_file(task: str) -> str:
    """The class-list file of ``task`` in a scenes folder without a manifest."""
    return "classes.txt" if task == "semseg" else f"{task}_classes.txt"


def scene_class_names(task: str, manifest: tuple[Path, dict] | None, meta_dirs: Sequence[Path],
                      required: bool) -> list[str] | None:
    """Class names from the manifest, else from the task's class-list file."""
    names: list[str] | None = None
    count: int | None = None
    source = ""
    if manifest is not None:
        path, data = manifest
        names_key, count_key = ("class_names", "num_classes") if task == "semseg" else \
            (f"{task}_class_names", f"{task}_num_classes")
        names = _per_task(data, names_key, "class_names", task)
        count = _per_task(data, count_key, "num_classes", task)
        source = str(path)
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise DataError(f"{path}: class names for {task} must be a list of strings")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise DataError(f"{path}: number of {task} classes must be an integer, got {count!r}")
    if names is None and count is None:
        for folder in meta_dirs:
            text_file = folder / class_list_file(task)
            if text_file.is_file():
                names = [line.strip() for line in text_file.read_text().splitlines() if line.strip()]
                source = str(text_file)
                break
    if names is None and count is None:
        if not required:
            return None
        raise DataError(f"no {task} class list for {meta_dirs[0]}: add class names to manifest.json or write "
                        f"{meta_dirs[0] / class_list_file(task)} with one class name per line (ids count from 0)")
    if names is None:
        names = [f"class_{i}" for i in range(count)]
    if count is not None and count != len(names):
        raise DataError(f"{source} gives {count} {task} classes but {len(names)} class names: make them agree")
    if not 1 <= len(names) <= IGNORE_INDEX:
        raise DataError(f"{source} gives {len(names)} {task} classes: need 1..{IGNORE_INDEX} "
                        f"({IGNORE_INDEX} is the ignore id)")
    return names


def _per_task(data: dict, key: str, shared_key: str, task: str):
    """``data[key]``, or ``data[shared_key][task]`` when the manifest keys classes by task."""
    shared = data.get(shared_key)
    if isinstance(shared, dict):
        return shared.get(task)
    return data.get(key)
