"""One progress-bar helper for long library work (training, generation, evaluation,
calibration).

The library reports progress on stderr through rich when asked; the CLI decides whether
to ask (``--quiet``/``--json`` turn it off). When stderr is not a terminal, a plain line
every tenth of the work replaces the bar. Work that starts deep inside the library
(the first-run kernel calibration) has no caller to ask it, so it follows a process-wide
switch instead, as ``huggingface_hub.utils.disable_progress_bars`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[..., None]

_bars_enabled = True


def progress_bars_enabled() -> bool:
    return _bars_enabled


@contextlib.contextmanager
def progress_bars_disabled(disabled: bool = True) -> Iterator[None]:
    """Silence, while inside, progress that no caller asked for (the CLI's ``--quiet``
    and ``--json``); the previous setting comes back on leaving."""
    global _bars_enabled
    previous = _bars_enabled
    _bars_enabled = previous and not disabled
    try:
        yield
    finally:
        _bars_enabled = previous


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, completed: int = 0) -> Iterator[Advance]:
    """Yield ``advance(n=1, status="")``; ``status`` is shown after the bar."""
    if not enabled:
        yield lambda n=1, status="": None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs (CI, nohup, pipes) get a plain line every tenth of the work instead of a bar.
        done = [completed]
        every = max(1, total // 10)

        def log_line(n: int = 1, status: str = "") -> None:
            done[0] += n
            # Crossing a tenth, not landing on one: work that advances by batches skips multiples.
            if done[0] // every > (done[0] - n) // every or done[0] == total:
                console.print(f"{description}: {done[0]}/{total} {status}", highlight=False, soft_wrap=True)

        yield log_line
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task_id = progress.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str = "") -> None:
            progress.update(task_id, advance=n, status=status)

        yield advance
