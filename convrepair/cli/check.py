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
    TrustCodeOption,
    emit_json,
    human,
    say,
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
    trust_model_code: TrustCodeOption = False,
    json_out: JsonOption = None,
) -> None:
    """Compare SOURCE and TARGET on sampled rounds of data; localize and type the fault when they differ.

    Exit 0 equivalent, 1 discrepant or inconclusive, 2 bad input.
    """
    from convrepair.check import CheckConfig, run_check
    from convrepair.lenses import lens_config
    from convrepair.plugins import default_registry
    from convrepair.contain.worker import run_contained
    from convrepair.report.progress import ForwardingProgress, for_terminal, relay, using
    from convrepair.report.terminal import render_check

    config = CheckConfig(data, rounds, samples, seed, atol, rtol, top_k, localize,
                         lenses=lens_config(lenses, seed, epsilons, pgd_steps, pgd_step))

    def job(send) -> dict:  # runs in the contained worker: every model is loaded there
        with using(ForwardingProgress(send)):  # the parent shows it (stderr, terminals only)
            report = run_check(default_registry(), source, target, config)
        return {"payload": report.to_json(), "exit": 0 if report.verdict == "equivalent" else 1}  # inconclusive: 1

    with using(for_terminal(json_out, quiet=not human(json_out))) as progress:
        result, containment = run_contained(job, reads=[source, target, data], on_message=relay(progress),
                                            trust_code=trust_model_code)
    payload = result["payload"] | {"containment": containment.to_json()}
    emit_json(json_out, payload)
    if human(json_out):
        render_check(payload)
        say(containment.summary(), json_out)
    raise typer.Exit(result["exit"])
