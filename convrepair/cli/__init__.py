"""The command line: one thin module per command group; the work happens in the engine modules.

Exit status: 0 ok / equivalent, 1 discrepancy or failed conversion/verification, 2 usage or bad
input (one line on stderr), 70 a bug in convrepair.
"""

from __future__ import annotations

import os
import sys

import typer

from convrepair.cli import check, config, convert, daemon, ledger, plugins, repair  # noqa: F401 - they register commands
from convrepair.cli.app import app, state
from convrepair.cli.common import normalize_argv
from convrepair.errors import EXIT_BAD_INPUT, ConvrepairError

EXIT_INTERNAL = 70


def main() -> None:
    """Entry point: run the app and turn `ConvrepairError`s into one line and an exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        status = app(args=normalize_argv(sys.argv[1:]), prog_name="convrepair", standalone_mode=False)
        sys.exit(status if isinstance(status, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ConvrepairError as exc:
        _traceback_if_debug()
        print(f"convrepair: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.BadParameter, typer.Abort) as exc:
        print(f"convrepair: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:  # click usage errors (typer vendors click) and the unexpected
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(EXIT_BAD_INPUT)
        _traceback_if_debug()
        print(f"convrepair: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)


def _traceback_if_debug() -> None:
    """`--debug` adds the traceback of the exception being handled; it never changes the exit status."""
    if state["debug"]:
        import traceback

        traceback.print_exc(file=sys.stderr)


__all__ = ["app", "main"]
