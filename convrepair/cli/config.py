"""`convrepair config validate FILE`: check a model's `convrepair.toml` in a CI pipeline before
the daemon meets it. Exit 0 valid, 2 invalid (every problem on its own line, naming the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.common import JsonOption, emit_json, say
from convrepair.errors import EXIT_BAD_INPUT

config_app = typer.Typer(help="Model configuration files (convrepair.toml).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A convrepair.toml (paths in it are relative to its directory).")],
    json_out: JsonOption = None,
    allow_read: Annotated[Optional[list[Path]], typer.Option("--allow-read", metavar="DIR", help="A folder (repeatable) the file may name besides its own, as given to the daemon.")] = None,
) -> None:
    """Validate FILE as the daemon would: keys at every depth, values, targets, files it names
    (each inside the model's folder or an --allow-read folder)."""
    import sys
    from dataclasses import asdict

    from convrepair.daemon.config import ConfigError, load_model_config
    from convrepair.plugins import default_registry

    try:
        config = load_model_config(file, default_registry().targets(), allowed=tuple(allow_read or ()))
    except ConfigError as exc:
        emit_json(json_out, {"schema": "convrepair.config-validation/v1", "file": str(file), "valid": False,
                             "problems": exc.problems})
        for line in exc.lines():
            print(f"convrepair: error: {line}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    emit_json(json_out, {"schema": "convrepair.config-validation/v1", "file": str(file), "valid": True, "problems": [],
                         "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}})
    say(f"{file}: valid ({', '.join(config.targets)})", json_out)
