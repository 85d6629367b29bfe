"""Every example in README.md, docs/*.md and examples/ is executed or parsed, so none
can use an option, command or function that does not exist.

How the examples are run (the mechanism a doc writer relies on):

* ```python blocks run in order, one namespace per file, in a fresh working folder
  that holds the files the examples name (``EXAMPLE_FILES``): a micro bundle as
  ``bundle.safetensors``. Everything else an example uses it must define itself.
* ```bash / ```sh / ```console blocks: every command that starts with ``mtlcompress``
  is parsed by the CLI's own parser without running (every option must exist and
  accept the value given, and the arguments must fit), and its ``--help`` works.
* examples/predict.py runs on the micro bundle and tiny synthetic scenes in ``data``.
* ```toml blocks and examples/plan.toml validate as ``sparsify all`` plans.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mtlcompress.bundle.format import save_bundle
from mtlcompress.cli.main import app
from mtlcompress.data.synth import generate_scenes
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.importing import read_key_map
from mtlcompress.runtime.calibration import default_cache_path, save_timings
from mtlcompress.sparsify.plan import parse_plan
from mtlcompress.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
_SEPARATORS = {"&&", "||", ";", "|"}


def blocks(path: Path, languages: set[str]) -> list[str]:
    """The bodies of the fenced code blocks of ``path`` in one of ``languages``."""
    return [body for lang, body in _FENCE.findall(path.read_text(encoding="utf-8")) if lang in languages]


def cli_commands(script: str) -> list[list[str]]:
    """The ``mtlcompress ...`` commands of a shell block, as argument lists."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.lstrip("$ ")
        tokens, current = shlex.split(line, comments=True), []
        for token in [*tokens, ";"]:
            if token in _SEPARATORS:
                if current and current[0] == "mtlcompress":
                    commands.append(current[1:])
                current = []
            else:
                current.append(token)
    return commands


def parse_cli(args: list[str]) -> list[str]:
    """Parse ``mtlcompress ARGS`` with the CLI's own parser, without running it; returns
    the command path (a bad option, value or argument count raises)."""
    command, path = typer.main.get_command(app), []
    while hasattr(command, "commands") and args and not args[0].startswith("-"):
        if args[0] not in command.commands:
            raise AssertionError(f"no command '{' '.join([*path, args[0]])}'")
        command, path, args = command.commands[args[0]], [*path, args[0]], args[1:]
    assert not hasattr(command, "commands") or args, f"'{' '.join(path)}' needs a sub-command"
    command.make_context(" ".join(["mtlcompress", *path]), list(args))
    return path


def _example_id(item: tuple[Path, list[str]]) -> str:
    return f"{item[0].name}: mtlcompress {' '.join(item[1])}"


SHELL_EXAMPLES = [(path, args) for path in DOCS for script in blocks(path, SHELL) for args in cli_commands(script)]
PYTHON_DOCS = [path for path in DOCS if blocks(path, {"python"})]


def test_the_docs_have_examples_to_check():
    assert len(SHELL_EXAMPLES) >= 10 and ROOT / "README.md" in PYTHON_DOCS


@pytest.mark.parametrize("example", SHELL_EXAMPLES, ids=map(_example_id, SHELL_EXAMPLES))
def test_shell_example_parses_with_the_cli(example):
    doc, args = example
    try:
        path = parse_cli(args)
    except Exception as exc:  # click's UsageError / BadParameter (typer may vendor its own click)
        pytest.fail(f"{doc.name}: `mtlcompress {' '.join(args)}` does not parse: {exc}")
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output


@pytest.mark.parametrize("bad", [["inspect", "b.safetensors", "--no-such-option"], ["sparsify", "nothing"],
                                 ["run"], ["inspect", "b.safetensors", "--max-images", "many"]])
def test_an_example_with_a_wrong_option_or_command_is_caught(bad):
    with pytest.raises(Exception):
        parse_cli(bad)


@pytest.fixture
def example_folder(tmp_path, monkeypatch, make_micro_bundle, fixed_timings) -> Path:
    """A working folder holding the files the examples name (``EXAMPLE_FILES``)."""
    monkeypatch.setenv("MTLCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    save_timings(fixed_timings, default_cache_path("cpu"))
    save_bundle(make_micro_bundle(), tmp_path / "bundle.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


EXAMPLE_FILES = ("bundle.safetensors",)


@pytest.mark.parametrize("doc", PYTHON_DOCS, ids=lambda p: p.name)
def test_python_examples_run(doc, example_folder):
    assert all((example_folder / name).is_file() for name in EXAMPLE_FILES)
    namespace: dict = {"__name__": "__example__"}
    for i, code in enumerate(blocks(doc, {"python"})):
        try:
            exec(compile(code, f"{doc.name} python block {i + 1}", "exec"), namespace)  # noqa: S102
        except Exception as exc:
            pytest.fail(f"{doc.name} python block {i + 1} fails: {type(exc).__name__}: {exc}")


def test_examples_predict_script_runs(example_folder, monkeypatch, capsys):
    generate_scenes(example_folder / "data", images=24, videos=1, frames=3, size=32)
    monkeypatch.setattr(sys, "argv", ["predict.py", "bundle.safetensors", "data"])
    runpy.run_path(str(ROOT / "examples" / "predict.py"), run_name="__main__")  # in-process: no second torch import
    out = capsys.readouterr().out
    assert "semseg" in out and "keyframe=True" in out


TOML_BLOCKS = [(path, body) for path in DOCS for body in blocks(path, {"toml"})]
# A TOML block whose only table is [keys] is an `mtlcompress import --key-map` file.
KEY_MAPS = [(path, body) for path, body in TOML_BLOCKS if set(tomllib.loads(body)) == {"keys"}]
PLANS = [(path, body) for path, body in TOML_BLOCKS if (path, body) not in KEY_MAPS]
PLANS += [(ROOT / "examples" / "plan.toml", (ROOT / "examples" / "plan.toml").read_text(encoding="utf-8"))]


@pytest.mark.parametrize("key_map", KEY_MAPS, ids=[f"{p.name} key map {i}" for i, (p, _) in enumerate(KEY_MAPS)])
def test_key_map_examples_read(key_map, tmp_path):
    doc, text = key_map
    (tmp_path / "map.toml").write_text(text, encoding="utf-8")
    assert read_key_map(tmp_path / "map.toml"), f"{doc.name}: the key map example has no rules"


@pytest.mark.parametrize("plan", PLANS, ids=[f"{p.name} plan {i}" for i, (p, _) in enumerate(PLANS)])
def test_plan_examples_validate(plan, tmp_path):
    """Every plan example passes ``parse_plan`` (keys, stages, values) once the data
    folder and checkpoints it names exist (micro models of the named tasks, made here)."""
    doc, text = plan
    raw = tomllib.loads(text)
    (tmp_path / raw.get("data", "data")).mkdir(parents=True, exist_ok=True)
    for task, relative in raw.get("tasks", {}).items():
        classes = 4 if get_task(task).channels is None else None
        info = CheckpointInfo(task=task, backbone=PRESETS["micro"], out_channels=get_task(task).out_channels(classes),
                              head_hidden=8, num_classes=classes)
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(build_model(info), info, tmp_path / relative)
    try:
        parse_plan(raw, tmp_path, doc.name)
    except Exception as exc:
        pytest.fail(f"{doc.name}: the plan example does not validate: {exc}")


def test_the_bring_your_own_models_worked_example_runs(tmp_path, monkeypatch, fixed_timings):
    """docs/import.md's worked example, as written: its Python block saves the source
    state dicts, then every command of its first shell block runs (import, data, sparsify,
    export, run) and must succeed."""
    doc = ROOT / "docs" / "import.md"
    monkeypatch.setenv("MTLCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    save_timings(fixed_timings, default_cache_path("cpu"))
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks(doc, {"python"})[0], f"{doc.name} python block 1", "exec"), {"__name__": "__example__"})  # noqa: S102
    commands = cli_commands(blocks(doc, SHELL)[0])
    assert [c[0] for c in commands] == ["import", "import", "data", "sparsify", "export", "run"]
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--quiet"])
        assert result.exit_code == 0, f"mtlcompress {' '.join(args)}: {result.output}{result.exception!r}"
    assert (tmp_path / "model.safetensors").is_file() and any((tmp_path / "maps").rglob("depth.png"))
