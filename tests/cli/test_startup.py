"""Start-up: ``--help``, ``--version`` and usage errors must not wait for torch. The CLI
modules import only typer, rich, the standard library and torch-free mtlcompress
modules at top level; every command still has working help, ``--json`` and ``--quiet``."""

from __future__ import annotations

import subprocess
import sys

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mtlcompress.cli import _options
from mtlcompress.cli.main import app

HEAVY = ("torch", "timm", "numpy")
LIGHT_CLI_MODULES = ("_options", "_output", "bench", "data", "demo", "export", "import_model", "inspect", "run",
                     "sparsify", "train")


def heavy_modules_after(statement: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after running ``statement``."""
    probe = f"{statement}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_command_modules_do_not_import_torch():
    imports = "\n".join(f"import mtlcompress.cli.{name}" for name in LIGHT_CLI_MODULES)
    assert heavy_modules_after(imports) == []


def test_the_cli_entry_point_does_not_import_torch():
    assert heavy_modules_after("import mtlcompress.cli.main") == []


def commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the app, with the words that call it (click's groups, whichever
    click typer built them with: it may vendor its own)."""
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = commands(ROOT)


def test_the_walk_finds_every_command_group():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"demo", "data synth", "train", "pretrain", "evaluate", "export", "inspect", "sparsify all",
            "sparsify weights", "run", "bench"} <= names


@pytest.mark.parametrize("words", [words for words, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help(words):
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("words, command", COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_every_command_has_json_and_quiet(words, command):
    flags = {flag for param in command.params for flag in param.opts}
    assert {"--json", "--quiet"} <= flags, f"{' '.join(words)} lacks {({'--json', '--quiet'} - flags)}"


def test_option_names_listed_in_help_match_their_sources():
    from mtlcompress.demo import DEMO_PRESETS, DEMO_STAGES
    from mtlcompress.runtime.runner import PRECISIONS
    from mtlcompress.tasks.registry import task_names

    assert _options.TASK_NAMES == task_names()
    assert _options.DEMO_PRESET_NAMES == tuple(DEMO_PRESETS)
    assert _options.DEMO_STEPS == DEMO_STAGES
    assert _options.PRECISION_NAMES == PRECISIONS


def test_train_help_lists_the_tasks():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert all(task in result.output for task in _options.TASK_NAMES)
