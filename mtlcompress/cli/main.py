"""The ``mtlcompress`` command: assembles the command groups and turns known errors
into one line and a non-zero exit code (``MTLCOMPRESS_DEBUG=1`` for the traceback)."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from mtlcompress.version import __version__
from mtlcompress.cli import bench as bench_cli
from mtlcompress.cli import data as data_cli
from mtlcompress.cli import demo as demo_cli
from mtlcompress.cli import export as export_cli
from mtlcompress.cli import import_model as import_cli
from mtlcompress.cli import inspect as inspect_cli
from mtlcompress.cli import run as run_cli
from mtlcompress.cli import sparsify as sparsify_cli
from mtlcompress.cli import train as train_cli
from mtlcompress.cli._options import join_img_size_arguments
from mtlcompress.cli._output import err_console, print_json
from mtlcompress.errors import MtlCompressError
from mtlcompress.progress import progress_bars_disabled

app = typer.Typer(
    name="mtlcompress",
    help="Compress single-task vision transformers into one multi-task model that shares computation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# In pipeline order, which is the order `--help` lists them.
demo_cli.register(app)
app.add_typer(data_cli.app, name="data")
train_cli.register(app)
import_cli.register(app)
app.add_typer(sparsify_cli.app, name="sparsify")
export_cli.register(app)
run_cli.register(app)
inspect_cli.register(app)
bench_cli.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"mtlcompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Compress single-task vision transformers into one multi-task model."""


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> None:
    args = join_img_size_arguments(sys.argv[1:] if argv is None else list(argv))
    # Read before parsing: a usage error must come out as JSON too.
    as_json = "--json" in args
    # Also silences progress no command asked for (the first-run kernel calibration).
    silent = as_json or "--quiet" in args or "-q" in args
    try:
        with progress_bars_disabled(silent):
            app(args=args, standalone_mode=False)
    except MtlCompressError as exc:
        if os.environ.get("MTLCOMPRESS_DEBUG"):
            raise
        _fail(exc.code, str(exc), EXIT_USER_ERROR, as_json)
    except KeyboardInterrupt:
        _fail("interrupted", "interrupted; re-run the same command to resume", EXIT_INTERRUPTED, as_json)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        if _is_usage_error(exc):
            if as_json:
                _fail("usage", exc.format_message(), exc.exit_code, True)
            exc.show()
            sys.exit(exc.exit_code)
        if as_json:  # a bug: scripts still get one object, people get the traceback on stderr
            print_json({"error": type(exc).__name__, "code": "internal", "message": str(exc)})
        raise


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors, whichever click raised them.

    Typer >= 0.2x vendors its own copy of click, whose exceptions are not
    ``click.ClickException``; both kinds carry ``show()`` and an int ``exit_code``.
    """
    return callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)


def _fail(code: str, message: str, exit_code: int, as_json: bool) -> None:
    if as_json:
        print_json({"error": True, "code": code, "message": message})
    else:
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
