"""Replace one marked section of docs/benchmarks.md, leaving the rest alone."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(name: str, body: str, doc: Path = DOC) -> None:
    """Put ``body`` between the section's markers; create the file (or append the
    markers) if needed; leave every byte outside the markers as it was."""
    start_marker, end_marker = markers(name)
    block = f"{start_marker}\n{body.strip()}\n{end_marker}"
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(f"# Benchmarks\n\n{block}\n")
        return
    text = doc.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start == -1 or end == -1 or end < start:
        separator = "" if text.endswith("\n\n") or not text else ("\n" if text.endswith("\n") else "\n\n")
        doc.write_text(f"{text}{separator}{block}\n")
        return
    doc.write_text(text[:start] + block + text[end + len(end_marker):])


def table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
