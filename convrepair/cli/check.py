"""`convrepair check`."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.hints import after_check
from convrepair.cli.common import (
    EpsilonsOption,
    JsonOption,
    LensesOption,
    MemoryOption,
    PgdStepOption,
    PgdStepsOption,
    TrustCodeOption,
    emit_json,
    human,
    say,
    tolerance_values,
)


@app.command()
def check(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="The source model (the reference behaviour).")],
    target: Annotated[Optional[Path], typer.Argument(metavar="TARGET", help="The converted model to prove.")] = None,
    data: Annotated[Optional[Path], typer.Option(help=".npz with x (source layout) and optional y; default: uniform inputs.")] = None,
    rounds: Annotated[int, typer.Option(help="Sampling rounds.")] = 5,
    samples: Annotated[int, typer.Option(help="Distinct samples per round.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sampling rounds.")] = 0,
    atol: Annotated[Optional[list[str]], typer.Option(metavar="[OUTPUT:]A", help="Absolute tolerance (default: by the target's precision); OUTPUT:A for one output by its name (repeatable).")] = None,
    rtol: Annotated[Optional[list[str]], typer.Option(metavar="[OUTPUT:]R", help="Relative tolerance; OUTPUT:R for one output (repeatable).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="k of the top-k agreement.")] = 1,
    localize: Annotated[Optional[bool], typer.Option("--localize/--no-localize", metavar="",
                                                     help="Layer-wise localization (default: when discrepant).")] = None,
    lenses: LensesOption = None,
    epsilons: EpsilonsOption = None,
    pgd_steps: PgdStepsOption = None,
    pgd_step: PgdStepOption = None,
    save_inputs: Annotated[Optional[Path], typer.Option(help="Also write the inputs compared on as an .npz (--data format).")] = None,
    save_outputs: Annotated[Optional[Path], typer.Option(help="Also write SOURCE's outputs on them: a golden file to check against elsewhere.")] = None,
    load_inputs: Annotated[Optional[Path], typer.Option(help="Inputs saved by --save-inputs (the same as --data).")] = None,
    load_outputs: Annotated[Optional[Path], typer.Option(help="A golden file from --save-outputs in SOURCE's place: give only TARGET; needs only TARGET's framework.")] = None,
    trust_model_code: TrustCodeOption = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing --save-inputs/--save-outputs files.")] = False,
    memory_mb: MemoryOption = 8192,
    strict: Annotated[bool, typer.Option("--strict", help="Audit every parameter and attribute (exporting IRs if need be); latent faults exit 1.")] = False,
    json_out: JsonOption = None,
) -> None:
    """Compare SOURCE and TARGET on sampled rounds of data; localize and type the fault when they differ.

    SOURCE may be a golden file (`--save-outputs`): then the inputs it holds are the default data.
    Exit 0 equivalent, 1 discrepant or inconclusive, 2 bad input.
    """
    from convrepair import broker
    from convrepair.check import CheckConfig
    from convrepair.lenses import lens_config
    from convrepair.plugins import default_registry
    from convrepair.report.progress import ForwardingProgress, for_terminal, relay, using
    from convrepair.report.terminal import render_check

    if load_inputs is not None:
        if data is not None and data != load_inputs:
            raise typer.BadParameter("give --data or --load-inputs, not both")
        data = load_inputs
    if load_outputs is not None:
        if target is not None:
            raise typer.BadParameter("--load-outputs stands in for SOURCE: give only TARGET")
        source, target = load_outputs, source
    if target is None:
        raise typer.BadParameter("TARGET is required: check SOURCE TARGET")
    registry = default_registry()
    golden = registry.detect_format(source) == "golden"
    if data is None and golden:
        data = source  # a golden file holds the inputs its outputs belong to
    common_atol, output_atol = tolerance_values(atol or [], "--atol")
    common_rtol, output_rtol = tolerance_values(rtol or [], "--rtol")
    config = CheckConfig(data, rounds, samples, seed, common_atol, common_rtol, top_k, localize,
                         output_atol=output_atol, output_rtol=output_rtol,
                         lenses=lens_config(lenses, seed, epsilons, pgd_steps, pgd_step), latent=True if strict else None)
    from convrepair.contain.staging import StagedOutputs
    from convrepair.contain.worker import run_contained
    from convrepair.ir_export import export_ahead
    from convrepair.localize.ir import export_options

    with StagedOutputs(force=force) as staged:
        inputs_to = staged.place(save_inputs) if save_inputs is not None else None
        outputs_to = staged.place(save_outputs) if save_outputs is not None else None

        # the parent asks for samples and judges the tensors the worker hands back (convrepair.broker)
        started, asked, evidence_dir = time.perf_counter(), broker.ask(registry, source, target, config), tempfile.mkdtemp(prefix="convrepair-evidence-")
        # the source's IR exported (or found cached) in a worker of its own before the check's worker
        # loads any model: the exporter's peak is never added to the check's; only an explicit
        # --localize pays for an export up front, otherwise a cached IR is granted if there is one
        ahead = export_ahead(registry, source, export_options(asked.target[1]), trust_code=trust_model_code,
                             memory_mb=memory_mb, export=localize is True, known=asked.source) if not golden else None

        def job(send) -> dict:  # runs in the contained worker: every model is loaded there
            if ahead is not None:
                from convrepair import ircache

                ircache.use(ahead.cache)
            if inputs_to is not None or outputs_to is not None:
                from convrepair.golden import save_reference

                save_reference(registry, source, config, inputs_to, outputs_to)
            with using(ForwardingProgress(send)):  # the parent shows it (stderr, terminals only)
                return broker.work(registry, source, target, config, asked.data.n, asked.indices, Path(evidence_dir))

        with using(for_terminal(json_out, quiet=not human(json_out))) as progress, _removed(evidence_dir):
            result, containment = run_contained(job, reads=[source, target, data, *(ahead.reads if ahead else [])], writes=[*staged.writes(), Path(evidence_dir)],
                                                on_message=relay(progress),
                                                trust_code=trust_model_code, memory_mb=memory_mb)
            report = broker.decide(asked, Path(evidence_dir), result, config, started)
        staged.publish()
    result = {"payload": report.to_json(), "exit": 0 if report.verdict == "equivalent" else 1}
    if strict and result["payload"].get("latent"):  # latent faults count only when asked to
        result["exit"] = 1
    payload = staged.relocate(result["payload"]) | {"containment": containment.to_json()}
    emit_json(json_out, payload)
    if human(json_out):
        render_check(payload)
        for latent in payload.get("latent") or []:  # differences the samples did not reveal
            say(f"latent {latent['type']} at {latent['node']}: {latent['detail']}", json_out)
        say(containment.summary(), json_out)
    after_check(payload, source, target, data, strict, golden=golden, json_target=json_out)
    raise typer.Exit(result["exit"])


@contextlib.contextmanager
def _removed(folder: str):
    """Our own temporary folder (the worker's evidence), removed once judged."""
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
