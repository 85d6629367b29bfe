"""Write ``docs/api.md``, the Python API reference, from the public objects' docstrings.

    python docs/make_api.py           # rewrite docs/api.md
    python docs/make_api.py --check   # exit 1 when docs/api.md is out of date

The list of documented names lives here (``SECTIONS``), in the order a user meets
them. Only the standard library's ``inspect`` reads the objects; Google-style
sections (``Args:``, ``Returns:`` ...) become bold headings with bulleted entries, so
the page reads the same as the docstrings. ``tests/test_api_reference.py`` fails when
the committed page differs from what this script writes.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent / "api.md"

SECTIONS: list[tuple[str, str, list[str]]] = [
    ("Loading and running a bundle", "What most users need: read a bundle file, predict images, stream video.", [
        "mtlcompress.load",
        "mtlcompress.runtime.runner.BundleRunner",
        "mtlcompress.runtime.keyframes.KeyframePolicy",
        "mtlcompress.runtime.results.FrameResult",
    ]),
    ("The bundle as data", "Build, read, write and take apart the plain-data bundle.", [
        "mtlcompress.Bundle",
        "mtlcompress.bundle.bundle.BundleTask",
        "mtlcompress.load_bundle",
        "mtlcompress.save_bundle",
        "mtlcompress.bundle.format.export_bundle",
    ]),
    ("Training single-task models", "The shared initialisation and one checkpoint per task.", [
        "mtlcompress.training.pretrain.pretrain_backbone",
        "mtlcompress.training.single_task.train_single_task",
        "mtlcompress.training.loop.TrainConfig",
    ]),
    ("Sparsifying", "Turn single-task checkpoints into sparse deltas against a base, one stage at a time or "
                    "from a plan file (docs/plan.md).", [
        "mtlcompress.sparsify.plan.load_plan",
        "mtlcompress.sparsify.pipeline.run_plan",
        "mtlcompress.sparsify.pipeline.PlanResult",
        "mtlcompress.sparsify.stage_weights.sparsify_weights",
        "mtlcompress.sparsify.stage_finetune.finetune_deltas",
        "mtlcompress.sparsify.stage_activations.sparsify_activations",
        "mtlcompress.sparsify.stage_temporal.sparsify_temporal",
        "mtlcompress.sparsify.common.StageResult",
    ]),
    ("Reports", "What a bundle holds and saves (docs/inspect-schema.md).", [
        "mtlcompress.report.inspect.inspect_bundle",
        "mtlcompress.report.html.write_html_report",
    ]),
    ("Errors", "Every problem a user can fix raises a subclass of `MtlCompressError` with a one-line message.", [
        "mtlcompress.MtlCompressError",
    ]),
]

_SECTION_HEADINGS = ("Args", "Arguments", "Attributes", "Returns", "Yields", "Raises", "Example", "Examples", "Note")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def resolve(dotted: str) -> Any:
    """The object named ``package.module.name`` (the longest importable module prefix)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def documented_names() -> list[str]:
    """Every name the page documents, in page order."""
    return [name for _, _, names in SECTIONS for name in names]


def members(cls: type) -> Iterator[tuple[str, Any]]:
    """A class's own public methods, properties and class methods, in source order."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            yield name, value.__func__
        elif isinstance(value, property) or inspect.isfunction(value):
            yield name, value


def signature(obj: Callable[..., Any], drop_self: bool = False) -> str:
    """``(a: int, b=2) -> str`` as in the source, without memory addresses in defaults."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=_Source.of(p.annotation)) for p in sig.parameters.values()]
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    sig = sig.replace(parameters=params, return_annotation=_Source.of(sig.return_annotation))
    return _ADDRESS.sub("", str(sig))


class _Source(str):
    """An annotation kept as source text (``from __future__ import annotations``),
    printed without the quotes ``inspect`` would add to a string."""

    @classmethod
    def of(cls, annotation: Any) -> Any:
        return cls(annotation) if isinstance(annotation, str) else annotation

    def __repr__(self) -> str:
        return str(self)


def docstring_markdown(doc: str | None) -> str:
    """A Google-style docstring as Markdown (sections bold, their entries bulleted)."""
    if not doc:
        return "*(no docstring)*"
    out: list[str] = []
    section = None
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if stripped.rstrip(":") in _SECTION_HEADINGS and stripped.endswith(":") and not line.startswith(" "):
            section = stripped[:-1]
            out += ([] if out and out[-1] == "" else [""]) + [f"**{section}:**", ""]
            continue
        if section and line.startswith("    ") and not line.startswith("        "):
            name, sep, rest = stripped.partition(": ")
            if sep and re.fullmatch(r"[\w*., \[\]|]+", name):
                out.append(f"- `{name}`: {rest}")
            else:
                out.append(f"- {stripped}")
        elif section and line.startswith("        "):
            out[-1] += " " + stripped
        else:
            if stripped and not line.startswith(" "):
                section = None  # a plain paragraph ends the section
            out.append(stripped)
    return "\n".join(out).strip()


def render_object(dotted: str) -> list[str]:
    obj = resolve(dotted)
    name = dotted.rsplit(".", 1)[-1]
    if inspect.isclass(obj):
        lines = [f"### `{dotted}`", "", "```text", f"class {name}{signature(obj)}", "```", "",
                 docstring_markdown(obj.__doc__), ""]
        for member, value in members(obj):
            if isinstance(value, property):
                lines += [f"#### `{name}.{member}` (property)", "", docstring_markdown(value.__doc__), ""]
            else:
                lines += [f"#### `{name}.{member}`", "", "```text", f"{member}{signature(value, drop_self=True)}",
                          "```", "", docstring_markdown(value.__doc__), ""]
        return lines
    return [f"### `{dotted}`", "", "```text", f"{name}{signature(obj)}", "```", "",
            docstring_markdown(obj.__doc__), ""]


def render() -> str:
    """The whole page."""
    lines = ["# Python API reference", "",
             "<!-- Generated by docs/make_api.py from the docstrings; edit those, then run "
             "`python docs/make_api.py`. -->", "",
             "`import mtlcompress` is cheap (torch is imported on first use of a name). The names below are the "
             "supported API; everything else may change between releases. The package ships `py.typed`, so type "
             "checkers use these signatures.", ""]
    for title, intro, _ in SECTIONS:
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        lines.append(f"- [{title}](#{anchor})")
    lines.append("")
    for title, intro, names in SECTIONS:
        lines += [f"## {title}", "", intro, ""]
        for dotted in names:
            lines += render_object(dotted)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"{PAGE} is out of date: run python docs/make_api.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
