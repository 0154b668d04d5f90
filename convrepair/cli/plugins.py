"""`convrepair plugins`."""

from __future__ import annotations

from typing import Annotated

import typer

from convrepair.cli.app import app
from convrepair.cli.common import JsonOption, emit_json, human


@app.command()
def plugins(
    json_out: JsonOption = None,
    deep: Annotated[bool, typer.Option("--deep/--quick", metavar="", help="Import each framework to prove it works (slower).")] = True,
) -> None:
    """List plugins, their formats and converters, and why an unavailable one is unavailable."""
    from convrepair.plugins import default_registry
    from convrepair.report.terminal import plugin_rows, render_plugins

    registry = default_registry()
    emit_json(json_out, plugin_rows(registry, deep))
    if human(json_out):
        render_plugins(registry, deep)
