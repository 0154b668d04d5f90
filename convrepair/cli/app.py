"""The Typer app and the options every command shares (`--debug`, `-q`, `-v`, `--version`).

Each command group lives in its own module and registers itself on `app`; `convrepair.cli`
imports them all. Nothing here imports a framework, so `--help` stays fast.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

app = typer.Typer(
    name="convrepair",
    help="Convert models between frameworks, prove the conversion on real data, localize and repair faults.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # rich tracebacks would print locals, key material included
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich panels print a `<bool>` placeholder after every flag
)

#: Process-wide output settings, set once by the root callback.
state = {"debug": False, "quiet": False, "verbose": 0}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"convrepair {version('convrepair')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors (and JSON where asked).")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    state.update(debug=debug, quiet=quiet, verbose=verbose)
    if debug:  # the contained worker forwards its own traceback too (contain/worker.py)
        import os

        os.environ["CONVREPAIR_DEBUG"] = "1"
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
