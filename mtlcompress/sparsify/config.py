"""Every sparsify stage's options, defined once: name, type, default, range and help.

Each stage has one frozen config dataclass (as PEFT's tuner configs do) registered by
name. The plan loader, the pipeline, the stage functions' defaults, the CLI options
and the table in docs/plan.md are all derived from these classes, so a default or a
range cannot drift between them. The training options every stage shares
(``TrainConfig``'s fields) get their ranges and help here too, with per-stage defaults.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mtlcompress.models.granularities import GRANULARITIES
from mtlcompress.errors import MtlCompressError
from mtlcompress.training.config import PRECISIONS, TrainConfig

# Weight-delta structures (sparsify/structures.py); kept here, torch-free, for `--help`.
STRUCTURES: tuple[str, ...] = ("unstructured", "block", "lowrank")
BLOCK_SIZES: tuple[str, ...] = ("1x16", "4x4", "8x8", "16x16", "32x32")  # bundle/structured_codecs.BLOCK_SHAPES

@dataclass(frozen=True)
class OptionSpec:
    """One option: what it is called, what it holds, which values are allowed, what it means."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False  # the minimum itself is not allowed
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is allowed (and means "not used")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.minimum is None and self.maximum is None:
            return ""
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        return f"{'(' if self.min_open else '['}{low}, {high}{']' if self.maximum is not None else ')'}"

    def check(self, value: Any, label: str) -> Any:
        """The value, converted (an int where a float is expected); one-line error otherwise."""
        if value is None and self.optional:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise MtlCompressError(f"{label} must be of type {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise MtlCompressError(f"{label} must be one of {', '.join(self.choices)}, got '{value}'")
        if self.type is float and not math.isfinite(value):
            raise MtlCompressError(f"{label} must be a finite number, got {value}")
        too_low = self.minimum is not None and (value <= self.minimum if self.min_open else value < self.minimum)
        too_high = self.maximum is not None and value > self.maximum
        if too_low or too_high:
            raise MtlCompressError(f"{label} must be in {self.describe_range()}, got {value}")
        return value


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           min_open: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A config field whose metadata holds its range and help."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum,
                                            "min_open": min_open, "choices": choices})


def _stage_training(steps: int) -> TrainConfig:
    # Stages are fine-tuning: a small learning rate, a short warm-up, no mid-run evaluation.
    return TrainConfig(steps=steps, lr=1e-4, warmup_steps=10, eval_every=10**9)


# Ranges and help of the training options every stage accepts (defaults: the stage's ``training``).
TRAINING_OPTIONS: dict[str, dict[str, Any]] = {
    "steps": {"minimum": 0, "help": "Optimiser steps."},
    "batch_size": {"minimum": 1, "help": "Global batch size."},
    "lr": {"minimum": 0.0, "help": "Peak learning rate."},
    "weight_decay": {"minimum": 0.0, "help": "AdamW weight decay."},
    "warmup_steps": {"minimum": 0, "help": "Linear warm-up steps before the cosine decay."},
    "grad_clip": {"minimum": 0.0, "help": "Gradient-norm clip (0: off)."},
    "seed": {"help": "Random seed; the same seed gives the same result."},
    "eval_every": {"minimum": 1, "help": "Evaluate every N steps."},
    "checkpoint_every": {"minimum": 1, "help": "Save resumable state every N steps."},
    "augment": {"help": "Random flips and crops while training."},
    "accumulate": {"minimum": 1, "help": "Micro-batches per step (gradient accumulation: the global batch "
                                          "need not fit the device at once)."},
    "precision": {"choices": PRECISIONS, "help": "Autocast precision (gates, density control and "
                                                              "thresholds stay fp32)."},
    "device": {"help": "auto (CUDA when present), cpu, cuda, cuda:N or mps: where the stage trains, "
                         "calibrates and evaluates; may change on resume."},
    "workers": {"minimum": 0, "help": "DataLoader worker processes; may change on resume."},
}


@dataclass(frozen=True)
class StageConfig:
    """Base of the per-stage configs; subclasses add fields made with ``option``."""

    stage: ClassVar[str]
    training: ClassVar[TrainConfig]

    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            kind, optional = hints[f.name], False
            if typing.get_origin(kind) in (typing.Union, types.UnionType):
                kind, optional = next(a for a in typing.get_args(kind) if a is not type(None)), True
            specs.append(OptionSpec(f.name, kind, f.default, optional=optional, **f.metadata))
        return specs

    @classmethod
    def training_specs(cls) -> list[OptionSpec]:
        return [OptionSpec(name, type(getattr(cls.training, name)), getattr(cls.training, name), **TRAINING_OPTIONS[name])
                for name in TRAINING_OPTIONS]

    @classmethod
    def all_specs(cls) -> dict[str, OptionSpec]:
        """Stage options and training options by name: everything a plan's stage table may hold."""
        return {spec.name: spec for spec in [*cls.training_specs(), *cls.option_specs()]}

    @classmethod
    def train_config(cls, **given: Any) -> TrainConfig:
        """The stage's training defaults with ``given`` (already checked) applied."""
        return dataclasses.replace(cls.training, **given)

    def validate(self, label: Callable[[OptionSpec], str] = lambda spec: spec.flag) -> None:
        """Check every field against its range; raises one ``MtlCompressError`` line."""
        for spec in self.option_specs():
            spec.check(getattr(self, spec.name), label(spec))

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


STAGE_CONFIGS: dict[str, type[StageConfig]] = {}


def register_stage(cls: type[StageConfig]) -> type[StageConfig]:
    """Register a stage config under its ``stage`` name (the order of registration is the run order)."""
    STAGE_CONFIGS[cls.stage] = cls
    return cls


GRANULARITY_HELP = "token (whole token rows; real speed-ups) or element (the paper)."
STRENGTH_HELP = "Activation-delta penalty strength (deeper layers x2)."
TOLERANCE_HELP = "Allowed relative metric drop from thresholds."
TOKEN_DENSITY_HELP = "Calibrate thresholds to this measured delta density instead of a tolerance."


@register_stage
@dataclass(frozen=True)
class WeightsConfig(StageConfig):
    """Stage 1: learn a sparse weight delta at a target density."""

    stage: ClassVar[str] = "weights"
    training: ClassVar[TrainConfig] = _stage_training(300)
    density: float = option(0.02, "Target fraction of backbone weights that may differ from the base.",
                            minimum=0.0, maximum=1.0, min_open=True)
    method: str = option("l0", "l0 (learned hard-concrete gates) or magnitude (keep the largest |W_t - W_0|, "
                         "no training).", choices=("l0", "magnitude"))
    gate_lr: float = option(0.1, "Learning rate of the gates' log-alpha.", minimum=0.0, min_open=True)
    init_delta: str = option("checkpoint", "Start the delta at the sub-task's own W_t - W_0 (checkpoint) or at 0 "
                             "(zero, as in the paper).", choices=("checkpoint", "zero"))
    per_tensor_gates: bool = option(False, "Also learn one gate per tensor.")
    structure: str = option("unstructured", "unstructured (any entries), block (whole blocks, by block norm) or "
                            "lowrank (truncated SVD); block and lowrank read --density as bytes of the dense "
                            "weights and need --method magnitude.", choices=STRUCTURES)
    block: str = option("8x8", "Block shape of --structure block (rows x columns).",
                        choices=BLOCK_SIZES)


@register_stage
@dataclass(frozen=True)
class FinetuneConfig(StageConfig):
    """Stage 2: fine-tune only the kept delta values (the support is frozen)."""

    stage: ClassVar[str] = "finetune"
    training: ClassVar[TrainConfig] = _stage_training(200)


@register_stage
@dataclass(frozen=True)
class ActivationsConfig(StageConfig):
    """Stage 3: sparse activation deltas vs the base task, then calibrated thresholds."""

    stage: ClassVar[str] = "activations"
    training: ClassVar[TrainConfig] = _stage_training(200)
    granularity: str = option("token", GRANULARITY_HELP, choices=GRANULARITIES)
    strength: float = option(0.05, STRENGTH_HELP, minimum=0.0)
    tolerance: float = option(0.02, TOLERANCE_HELP, minimum=0.0)
    token_density: float | None = option(None, TOKEN_DENSITY_HELP, minimum=0.0, maximum=1.0)
    calibration_images: int = option(128, "Training images the thresholds are calibrated on.", minimum=1)


@register_stage
@dataclass(frozen=True)
class TemporalConfig(StageConfig):
    """Stage 4 (video): sparse frame-to-frame activation deltas, then temporal thresholds."""

    stage: ClassVar[str] = "temporal"
    training: ClassVar[TrainConfig] = _stage_training(200)
    granularity: str = option("token", GRANULARITY_HELP, choices=GRANULARITIES)
    strength: float = option(0.05, STRENGTH_HELP, minimum=0.0)
    tolerance: float = option(0.02, TOLERANCE_HELP, minimum=0.0)
    token_density: float | None = option(None, TOKEN_DENSITY_HELP, minimum=0.0, maximum=1.0)
    max_offset: int = option(3, "Largest frame offset sampled.", minimum=1)


def _cell(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def options_markdown() -> Iterator[str]:
    """The option tables of docs/plan.md (a test keeps the file equal to this)."""
    stages = list(STAGE_CONFIGS.values())
    yield "| option | type | range | " + " | ".join(f"`{c.stage}`" for c in stages) + " | meaning |"
    yield "|---|---|---|" + "---|" * len(stages) + "---|"
    for spec in stages[0].training_specs():
        defaults = " | ".join(_cell(c.all_specs()[spec.name].default) for c in stages)
        yield f"| `{spec.name}` | {spec.type.__name__} | {spec.describe_range()} | {defaults} | {_escape(spec.help)} |"
    yield ""
    yield "Each stage's own options (`finetune` has none):"
    yield ""
    yield "| stage | option | type | range | default | meaning |"
    yield "|---|---|---|---|---|---|"
    for config in stages:
        for spec in config.option_specs():
            kind = spec.type.__name__ + (" or unset" if spec.optional else "")
            yield (f"| `{config.stage}` | `{spec.name}` | {kind} | {spec.describe_range()} | {_cell(spec.default)} "
                   f"| {_escape(spec.help)} |")
