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
from mtlcompress.cli import inspect as inspect_cli
from mtlcompress.cli import run as run_cli
from mtlcompress.cli import sparsify as sparsify_cli
from mtlcompress.cli import train as train_cli
from mtlcompress.cli._output import err_console
from mtlcompress.errors import MtlCompressError

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


def main() -> None:
    try:
        app(standalone_mode=False)
    except MtlCompressError as exc:
        if os.environ.get("MTLCOMPRESS_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
