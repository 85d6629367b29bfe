"""Plan files for ``mtlcompress sparsify all``: every stage for every sub-task, in order.

A plan is TOML::

    data = "demo-out/data"             # dataset folder (labels optional)
    out = "demo-out/sparse"            # where stage outputs go
    base = "semseg"                    # a task name, or "auto"
    stages = ["weights", "finetune", "activations"]   # optional; add "temporal" for video
    supervision = "auto"               # labels | distill | auto

    [tasks]                            # the single-task checkpoints
    semseg = "demo-out/checkpoints/semseg.safetensors"
    depth = "demo-out/checkpoints/depth.safetensors"

    [weights]                          # per-stage settings (all optional; see config.py)
    density = 0.02
    steps = 300

Each stage writes ``<out>/<task>.<stage>.safetensors`` and is skipped when that file
exists, so re-running an interrupted plan continues where it stopped (and a stage that
was killed resumes from its own saved state).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlcompress.errors import MtlCompressError, PlanError
from mtlcompress.models.checkpoint import read_checkpoint_info
from mtlcompress.sparsify.config import STAGE_CONFIGS, TRAINING_OPTIONS, OptionSpec
from mtlcompress.sparsify.supervision import SUPERVISION
from mtlcompress.tasks.registry import task_names
from mtlcompress.training.loop import TrainConfig

STAGES = tuple(STAGE_CONFIGS)
DEFAULT_STAGES = ("weights", "finetune", "activations")
_TOP_LEVEL = {"data", "out", "base", "stages", "supervision", "seed", "tasks", *STAGES}


@dataclass
class Plan:
    data: Path
    out: Path
    base: str
    tasks: dict[str, Path]
    stages: tuple[str, ...] = DEFAULT_STAGES
    supervision: str = "auto"
    seed: int = 0
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage_output(self, task: str, stage: str) -> Path:
        return self.out / f"{task}.{stage}.safetensors"

    def train_config(self, stage: str, **defaults: Any) -> TrainConfig:
        """The stage's training defaults, the plan's seed and ``defaults`` (e.g. the command
        line's ``device``), then the stage table's training keys."""
        settings = {k: v for k, v in self.options.get(stage, {}).items() if k in TRAINING_OPTIONS}
        return STAGE_CONFIGS[stage].train_config(**{"seed": self.seed, **defaults, **settings})

    def stage_kwargs(self, stage: str) -> dict[str, Any]:
        """The stage options the plan sets (the stage function's defaults fill in the rest)."""
        return {k: v for k, v in self.options.get(stage, {}).items() if k not in TRAINING_OPTIONS}

    def final_checkpoints(self, base: str | None = None) -> dict[str, Path]:
        """The last stage output of every task (the source checkpoint where none was run)."""
        base = base or self.base
        final = {}
        for task, source in self.tasks.items():
            stages = list(self.stages)
            if task == base:
                stages = ["temporal"] if "temporal" in self.stages else []
            outputs = [self.stage_output(task, s) for s in stages]
            final[task] = next((p for p in reversed(outputs) if p.exists()), source)
        return final


def load_plan(path: str | os.PathLike) -> Plan:
    """Parse and validate a plan file (docs/plan.md) before any work starts.

    Args:
        path: the TOML plan; relative paths inside it are relative to its folder.

    Raises:
        PlanError: one line naming the problem (unknown key, missing file, bad value).
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: plan file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not valid TOML ({exc})") from None
    return parse_plan(raw, path.parent, str(path))


def parse_plan(raw: dict[str, Any], root: Path, name: str = "plan") -> Plan:
    """Validate a plan dict; relative paths are resolved against ``root``."""
    fail: Callable[[str], PlanError] = lambda message: PlanError(f"{name}: {message}")  # noqa: E731
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_LEVEL))}")
    for key in ("data", "tasks"):
        if key not in raw:
            raise fail(f"missing required key '{key}'")
    for key in ("data", "out", "base", "supervision"):
        if key in raw and not isinstance(raw[key], str):
            raise fail(f"{key} must be a string, got {raw[key]!r}")
    tasks_raw = raw["tasks"]
    if not isinstance(tasks_raw, dict) or len(tasks_raw) < 2:
        raise fail("[tasks] must map at least two task names to checkpoint paths")
    tasks: dict[str, Path] = {}
    for task, value in tasks_raw.items():
        if task not in task_names():
            raise fail(f"unknown task '{task}' in [tasks]; known: {', '.join(task_names())}")
        if not isinstance(value, str):
            raise fail(f"[tasks] {task} must be a path string")
        checkpoint = (root / value).resolve()
        if not checkpoint.is_file():
            raise fail(f"checkpoint for '{task}' not found: {checkpoint}")
        found = read_checkpoint_info(checkpoint).task
        if found != task:
            raise fail(f"tasks.{task} = '{value}' is a '{found}' checkpoint")
        tasks[task] = checkpoint
    base = raw.get("base", "auto")
    if base != "auto" and base not in tasks:
        raise fail(f"base '{base}' is not among the tasks ({', '.join(tasks)}); use one of them or \"auto\"")
    stages = raw.get("stages", list(DEFAULT_STAGES))
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise fail(f"stages must be a non-empty list drawn from {', '.join(STAGES)}")
    if [s for s in STAGES if s in stages] != list(stages):
        raise fail(f"stages must keep the order {', '.join(STAGES)}")
    if "weights" not in stages and any(s in stages for s in ("finetune", "activations")):
        raise fail("the finetune and activations stages need the weights stage before them")
    options: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        table = raw.get(stage, {})
        if not isinstance(table, dict):
            raise fail(f"[{stage}] must be a table")
        allowed = STAGE_CONFIGS[stage].all_specs()
        for key, value in table.items():
            if key not in allowed:
                raise fail(f"[{stage}] has unknown option '{key}'; allowed: {', '.join(sorted(allowed))}")
            options.setdefault(stage, {})[key] = _check(allowed[key], value, f"[{stage}] {key}", fail)
    supervision = raw.get("supervision", "auto")
    if supervision not in SUPERVISION:
        raise fail(f"supervision must be one of {', '.join(SUPERVISION)}, got '{supervision}'")
    data = (root / raw["data"]).resolve()
    if not data.is_dir():
        raise fail(f"data folder not found: {data}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise fail("seed must be an integer")
    return Plan(data=data, out=(root / raw.get("out", "sparse")).resolve(), base=base, tasks=tasks,
                stages=tuple(stages), supervision=supervision, seed=seed, options=options)


def _check(spec: OptionSpec, value: Any, label: str, fail: Callable[[str], PlanError]) -> Any:
    """The option's own range check (the one the CLI and the stage functions use), as a ``PlanError``."""
    try:
        return spec.check(value, label)
    except MtlCompressError as exc:
        raise fail(str(exc)) from None
