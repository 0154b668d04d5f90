"""`convrepair check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.common import (
    EpsilonsOption,
    JsonOption,
    LensesOption,
    PgdStepOption,
    PgdStepsOption,
    emit_json,
    human,
)


@app.command()
def check(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="The source model (the reference behaviour).")],
    target: Annotated[Path, typer.Argument(metavar="TARGET", help="The converted model to prove.")],
    data: Annotated[Optional[Path], typer.Option(help=".npz with x (source layout) and optional y; default: uniform inputs.")] = None,
    rounds: Annotated[int, typer.Option(help="Sampling rounds.")] = 5,
    samples: Annotated[int, typer.Option(help="Distinct samples per round.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sampling rounds.")] = 0,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance (default by the target's precision).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="k of the top-k agreement.")] = 1,
    localize: Annotated[Optional[bool], typer.Option("--localize/--no-localize", metavar="",
                                                     help="Layer-wise localization (default: when discrepant).")] = None,
    lenses: LensesOption = None,
    epsilons: EpsilonsOption = None,
    pgd_steps: PgdStepsOption = None,
    pgd_step: PgdStepOption = None,
    json_out: JsonOption = None,
) -> None:
    """Compare SOURCE and TARGET on sampled rounds of data; localize and type the fault when they differ.

    Exit 0 equivalent, 1 discrepant or inconclusive, 2 bad input.
    """
    from convrepair.check import CheckConfig, run_check
    from convrepair.lenses import lens_config
    from convrepair.plugins import default_registry
    from convrepair.report.terminal import render_check, round_progress

    config = CheckConfig(data, rounds, samples, seed, atol, rtol, top_k, localize,
                         lenses=lens_config(lenses, seed, epsilons, pgd_steps, pgd_step))
    if human(json_out):
        with round_progress(rounds) as advance:
            report = run_check(default_registry(), source, target, config, on_round=advance)
    else:
        report = run_check(default_registry(), source, target, config)
    payload = report.to_json()
    emit_json(json_out, payload)
    if human(json_out):
        render_check(payload)
    raise typer.Exit(0 if report.verdict == "equivalent" else 1)  # discrepant or inconclusive: 1
