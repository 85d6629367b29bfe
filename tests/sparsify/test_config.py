"""Every stage option is defined once (``sparsify/config.py``); the CLI, the plan,
the stage functions and docs/plan.md must all say the same thing."""

import dataclasses
import inspect
import math
import re
from pathlib import Path

import pytest
import typer

from mtlcompress.cli.sparsify import CLI_TRAINING_OPTIONS
from mtlcompress.cli.sparsify import app as sparsify_app
from mtlcompress.errors import MtlCompressError
from mtlcompress.sparsify.pipeline import STAGE_FUNCTIONS
from mtlcompress.sparsify.plan import STAGES
from mtlcompress.sparsify.config import (
    STAGE_CONFIGS,
    TRAINING_OPTIONS,
    OptionSpec,
    WeightsConfig,
    options_markdown,
)
from mtlcompress.training.loop import TrainConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plan.md"


def _cli_params(stage: str) -> dict:
    command = typer.main.get_command(sparsify_app).commands[stage]
    return {param.name: param for param in command.params}


def test_every_stage_is_registered_everywhere():
    assert tuple(STAGE_CONFIGS) == STAGES == tuple(STAGE_FUNCTIONS)
    assert set(TRAINING_OPTIONS) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_cli_options_match_the_config(stage):
    config = STAGE_CONFIGS[stage]
    params = _cli_params(stage)
    for spec in config.option_specs():
        assert spec.name in params, f"sparsify {stage} lacks {spec.flag}"
        assert params[spec.name].default == spec.default, spec.name
        assert params[spec.name].help == spec.help
    training = {spec.name: spec for spec in config.training_specs()}
    for name in CLI_TRAINING_OPTIONS:
        assert params[name].default == training[name].default, name
    own = {spec.name for spec in config.option_specs()} | set(CLI_TRAINING_OPTIONS)
    generic = {"base", "task", "data", "out", "supervision", "resume", "overwrite", "as_json", "quiet"}
    assert set(params) - generic == own


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_stage_function_defaults_match_the_config(stage):
    signature = inspect.signature(STAGE_FUNCTIONS[stage])
    for spec in STAGE_CONFIGS[stage].option_specs():
        assert signature.parameters[spec.name].default == spec.default, spec.name


def test_weights_defaults_agree_everywhere():
    # The disagreements issue #16 found: warm-up 10 (plan) vs 20 (stage function), density optional vs required.
    assert WeightsConfig.training.warmup_steps == 10
    assert inspect.signature(STAGE_FUNCTIONS["weights"]).parameters["density"].default == 0.02


def _docs_rows() -> tuple[str, list[list[str]]]:
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("<!-- stage-options:start -->\n")[1].split("<!-- stage-options:end -->")[0]
    return block, [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
                   for line in block.splitlines() if line.startswith("| `")]


def test_docs_table_is_generated_from_the_config():
    block, _ = _docs_rows()
    assert block == "\n".join(options_markdown()) + "\n", "regenerate the table in docs/plan.md (see its text)"


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_docs_table_lists_every_plan_key_with_its_default(stage):
    _, rows = _docs_rows()
    config = STAGE_CONFIGS[stage]
    stages = list(STAGE_CONFIGS)
    training_rows = {r[0].strip("`"): r for r in rows if len(r) == 4 + len(stages)}
    own_rows = {r[1].strip("`"): r for r in rows if len(r) == 6 and r[0] == f"`{stage}`"}
    documented = set(training_rows) | set(own_rows)
    assert documented == set(config.all_specs()), "plan keys and docs/plan.md differ"
    for spec in config.training_specs():
        assert _parse(training_rows[spec.name][3 + stages.index(stage)]) == spec.default, spec.name
    for spec in config.option_specs():
        assert _parse(own_rows[spec.name][4]) == spec.default, spec.name


def _parse(cell: str):
    if cell == "unset":
        return None
    if cell in ("true", "false"):
        return cell == "true"
    if cell.startswith('"'):
        return cell.strip('"')
    return float(cell)


@pytest.mark.parametrize(("spec", "value", "message"), [
    (OptionSpec("density", float, 0.02, "", minimum=0.0, maximum=1.0, min_open=True), 0.0, r"in \(0, 1\]"),
    (OptionSpec("density", float, 0.02, "", minimum=0.0, maximum=1.0, min_open=True), 1.5, r"in \(0, 1\]"),
    (OptionSpec("lr", float, 0.1, "", minimum=0.0), math.nan, "finite"),
    (OptionSpec("lr", float, 0.1, "", minimum=0.0), math.inf, "finite"),
    (OptionSpec("steps", int, 1, "", minimum=0), -5, r"in \[0, inf\)"),
    (OptionSpec("steps", int, 1, "", minimum=0), 2.0, "type int"),
    (OptionSpec("steps", int, 1, "", minimum=0), True, "type int"),
    (OptionSpec("augment", bool, True, ""), 1, "type bool"),
    (OptionSpec("method", str, "l0", "", choices=("l0", "magnitude")), "l1", "one of l0, magnitude"),
    (OptionSpec("token_density", float, None, "", minimum=0.0, maximum=1.0), None, "type float"),
])
def test_option_check_refuses_with_one_line(spec, value, message):
    with pytest.raises(MtlCompressError, match=message) as error:
        spec.check(value, spec.flag)
    assert str(error.value).startswith(spec.flag) and "\n" not in str(error.value)


def test_option_check_accepts_edges_and_converts_ints():
    density = OptionSpec("density", float, 0.02, "", minimum=0.0, maximum=1.0, min_open=True)
    assert density.check(1, "density") == 1.0 and isinstance(density.check(1, "density"), float)
    optional = OptionSpec("token_density", float, None, "", minimum=0.0, maximum=1.0, optional=True)
    assert optional.check(None, "x") is None and optional.check(0.0, "x") == 0.0
