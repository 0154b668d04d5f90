"""What the commands share: the `--json PATH|-` option, printing rules, option parsing.

One grammar everywhere: `--json PATH` writes the command's JSON document atomically to PATH,
`--json -` prints it on stdout and nothing else goes there (no tables, no progress).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convrepair.cli.app import state

JsonOption = Annotated[Optional[str], typer.Option(
    "--json", metavar="PATH", help="Write the result as JSON to PATH; '-' prints it on stdout instead of tables.")]


def emit_json(target: str | None, payload: Any) -> None:
    """Write `payload` where `--json` said: a file (atomically), or stdout for '-'."""
    if target is None:
        return
    if target == "-":
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    from convrepair.fsutil import write_json_atomic

    write_json_atomic(Path(target), payload)


def human(json_target: str | None = None) -> bool:
    """Whether to print tables and messages: not with -q, and not when JSON goes to stdout."""
    return not state["quiet"] and json_target != "-"


def say(message: str, json_target: str | None = None) -> None:
    """A one-line human message (on stdout), subject to `human()`."""
    if human(json_target):
        typer.echo(message)


def next_step(command: str, why: str, json_target: str | None = None) -> None:
    """One line that says what to run next (`next: convrepair check … — why`); silent with -q and
    with `--json -`, like every human message."""
    say(f"next: {command}  ({why})", json_target)


def parse_options(pairs: list[str]) -> dict[str, str]:
    """`-O KEY=VALUE` pairs as a dict."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def tolerance_values(values: list[str], flag: str) -> tuple[float | None, dict[str, float]]:
    """`--atol 1e-4 --atol logits:1e-3` → (1e-4, {"logits": 1e-3}): a common value and per-output ones."""
    common: float | None = None
    per_output: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition(":")
        try:
            parsed = float(number)
        except ValueError:
            raise typer.BadParameter(f"{flag} expects a number or OUTPUT:NUMBER, got {value!r}") from None
        if parsed < 0 or parsed != parsed:
            raise typer.BadParameter(f"{flag} must be a non-negative number, got {value!r}")
        if sep:
            per_output[name] = parsed
        else:
            common = parsed
    return common, per_output


#: The root options every command takes; accepted before or after the subcommand.
GLOBAL_FLAGS = ("--debug", "--quiet", "-q", "--verbose", "-v")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """`convrepair check A B -q` means `convrepair -q check A B`: the root's flags (`--debug`, `-q`,
    `-v`, `-vv`) are moved in front of the subcommand, wherever they were written. Nothing after a
    `--` moves, and an option's value is never taken for a flag (no option of ours takes a value
    that starts with `-q`/`-v`)."""
    hoisted: list[str] = []
    rest: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[index:])
            break
        if arg in GLOBAL_FLAGS or (len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and set(arg[1:]) <= {"v", "q"}):
            hoisted.append(arg)
        else:
            rest.append(arg)
    return hoisted + rest


def normalize_argv(argv: list[str]) -> list[str]:
    """The one grammar: root flags anywhere (`hoist_global_flags`); a bare `--json` (at the end, or
    before another option) means `--json -`, as it did once."""
    argv = hoist_global_flags(argv)
    out: list[str] = []
    for index, arg in enumerate(argv):
        out.append(arg)
        if arg == "--json":
            following = argv[index + 1] if index + 1 < len(argv) else None
            if following is None or (following.startswith("-") and following != "-"):
                out.append("-")
    return out


TrustCodeOption = Annotated[bool, typer.Option(
    "--trust-model-code", help="Run TorchScript/SavedModel code even where no containment can be established.")]
MemoryOption = Annotated[int, typer.Option(
    "--memory-mb", min=0, help="Memory limit of the contained worker (its private writable memory), MB; 0: none.")]

# the lens options `check` and `repair` share
LensesOption = Annotated[Optional[str], typer.Option(
    "--lenses", help="Reliability lenses: calibration,uncertainty,robustness,occlusion, or all (default: none).")]
EpsilonsOption = Annotated[Optional[str], typer.Option(
    "--epsilons", help="Robustness lens: L∞ ε as shares of the input range (default 0.02,0.05,0.1).")]
PgdStepsOption = Annotated[Optional[int], typer.Option("--pgd-steps", help="Robustness lens: PGD steps (default 10).")]
PgdStepOption = Annotated[Optional[float], typer.Option(
    "--pgd-step", help="Robustness lens: PGD step as a multiple of ε (default 2.5 / steps).")]
