"""docs/api.md is generated from the docstrings (docs/make_api.py) and says what every
public entry point takes: the committed page matches the code, names resolve, and
each documented function names every one of its parameters in its docstring."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make_api():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_api"] = module
    spec.loader.exec_module(module)
    return module


make_api = _make_api()


def test_committed_page_equals_the_generated_one():
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == make_api.render(), "docs/api.md is stale: run `python docs/make_api.py`"
    assert make_api.main(["--check"]) == 0


@pytest.mark.parametrize("dotted", make_api.documented_names())
def test_documented_objects_have_their_own_docstrings(dotted):
    obj = make_api.resolve(dotted)
    doc = inspect.getdoc(obj) or ""
    assert doc and not doc.startswith(obj.__name__ + "("), f"{dotted}: no docstring (or only dataclass's default)"
    if inspect.isclass(obj):
        for name, member in make_api.members(obj):
            assert inspect.getdoc(member), f"{dotted}.{name}: no docstring"
        return
    params = [p for p in inspect.signature(obj).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if f"{p.name}:" not in doc and f"``{p.name}``" not in doc]
    assert not missing, f"{dotted}: the docstring does not say what {missing} are (Google-style Args:)"


def test_the_public_names_of_the_package_are_documented():
    import mtlcompress

    documented = {name.rsplit(".", 1)[-1] for name in make_api.documented_names()}
    assert set(mtlcompress.__all__) - {"__version__"} <= documented


def test_package_ships_py_typed():
    assert (ROOT / "mtlcompress" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '[tool.setuptools.package-data]' in pyproject and '"py.typed"' in pyproject
