"""The activation-delta granularities, in a torch-free module: the CLI lists them as
option choices before any command has imported torch."""

from __future__ import annotations

# "element": each activation entry is kept or skipped; "token": whole token rows.
GRANULARITIES = ("element", "token")
