"""Size limits on what we read, in a module without heavy imports so that the CLI can
show them as option defaults without importing torch."""

from __future__ import annotations

# Pixels per image: far above any camera or medium format, while a declared 20000x20000
# header (400 MP, a few bytes on disk) or a 12000x12000 scan (~700 MB once decoded) is
# refused. ``mtlcompress.io.images.MAX_PIXELS`` (set it to read bigger images on purpose)
# and ``mtlcompress run --max-pixels`` start from this value.
MAX_PIXELS = 50_000_000
