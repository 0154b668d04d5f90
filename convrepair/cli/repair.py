"""`convrepair repair`: a converted model against its source, or one model against its labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convrepair.cli.app import app
from convrepair.cli.hints import after_repair
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
)


@app.command()
def repair(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="The source model (reference behaviour), or the MODEL to repair against its labels.")],
    target: Annotated[Optional[Path], typer.Argument(metavar="[TARGET]", help="The converted model to repair (omit to repair MODEL itself).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the repaired model (target's format, with a sidecar). Required.")] = None,
    previous: Annotated[Optional[Path], typer.Option(help="Version N-1 of MODEL: repair the regressions against it.")] = None,
    data: Annotated[Optional[Path], typer.Option(help=".npz with x (source layout) and optional y.")] = None,
    strategy: Annotated[str, typer.Option(help="auto | restore (the source's parameters, attributes, input pipeline or precision) | pso (a weight patch)")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    budget_seconds: Annotated[float, typer.Option(help="Wall-clock budget for the patch search and, separately, the precision fallback (restores always run).")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the data split and the search.")] = 0,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance the repair must meet (default: check's).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance the repair must meet.")] = None,
    optimiser: Annotated[str, typer.Option(help="Patch search: pso (Arachne v1) or de (Arachne TOSEM).")] = "pso",
    accept_improvement: Annotated[bool, typer.Option("--accept-improvement", help="Accept fewer held-out flips (break rate <= 1%) short of equivalence.")] = False,
    max_flip_rate: Annotated[float, typer.Option(help="`repaired` needs the one-sided 95% upper bound of the held-out flip rate at or below this.")] = 0.01,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out; write the target unchanged when it is already equivalent.")] = False,
    prefer: Annotated[str, typer.Option(help="When a precision fallback and a PSO patch both work: auto | fast (the patch) | exact (the fallback).")] = "auto",
    lenses: LensesOption = None,
    epsilons: EpsilonsOption = None,
    pgd_steps: PgdStepsOption = None,
    pgd_step: PgdStepOption = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Without --data: repair against uniform random inputs, on purpose.")] = False,
    trust_model_code: TrustCodeOption = False,
    memory_mb: MemoryOption = 8192,
    json_out: JsonOption = None,
    sign_key: Annotated[Optional[Path], typer.Option(help="Service key: write a signed repair log (pending approval).")] = None,
    log: Annotated[Optional[Path], typer.Option(help="Where the signed log goes (default: OUT.log.dsse.json).")] = None,
) -> None:
    """Repair TARGET so that it behaves like SOURCE; or, with one model, repair its regressions
    against --previous or its misclassifications; prove it on held-out samples.

    Exit 0 repaired or already equivalent (then nothing is written unless --force), 1 improved,
    unproven (too few held-out samples to prove it: the report names how many) or not repaired
    (nothing written), 2 bad input.
    """
    from convrepair.lenses import lens_config
    from convrepair.ledger.keys import load_private_key
    from convrepair.ledger.log import now
    from convrepair.plugins import default_registry
    from convrepair.repair import RepairConfig, run_repair
    from convrepair.report.progress import ForwardingProgress, for_terminal, relay, using
    from convrepair.errors import BadInput
    from convrepair.report.terminal import render_repair

    if out is None:
        raise typer.BadParameter("--out is required: where to write the repaired model")
    if not budget_seconds >= 0:  # as convrepair.toml's repair.budget_seconds
        raise BadInput(f"--budget-seconds must be 0 or more, not {budget_seconds:g}")
    if not 0 < max_flip_rate < 1:
        raise BadInput(f"--max-flip-rate must lie between 0 and 1 (exclusive), not {max_flip_rate:g}")
    if sign_key is not None:
        load_private_key(sign_key)  # a bad key fails before any work
    started = now()

    def sign(payload: dict) -> Path | None:
        if sign_key is None:
            return None
        from convrepair.ledger.log import write_signed_log

        path = write_signed_log(payload, log or out.with_name(out.name + ".log.dsse.json"), sign_key, started)
        say(f"signed log (pending approval): {path}", json_out)
        return path

    config = RepairConfig(data=data, strategy=strategy, device=device, budget_seconds=budget_seconds, seed=seed,
                          atol=atol, rtol=rtol, optimiser=optimiser, accept_improvement=accept_improvement,
                          prefer=prefer, lenses=lens_config(lenses, seed, epsilons, pgd_steps, pgd_step),
                          max_flip_rate=max_flip_rate, force=force)
    if target is not None and previous is not None:
        raise typer.BadParameter("--previous repairs one MODEL; give it without a TARGET")
    if data is None and not synthetic:
        raise typer.BadParameter("repair needs --data (samples to repair on and prove the repair on held-out ones); "
                                 "pass --synthetic to repair against uniform random inputs on purpose")
    if data is not None and synthetic:
        raise typer.BadParameter("give --data or --synthetic, not both")
    import shutil
    import tempfile

    from convrepair.contain.staging import StagedOutputs
    from convrepair.contain.worker import run_contained

    from convrepair.ir_export import export_ahead
    from convrepair.localize.ir import export_options
    from convrepair.sidecar import read_sidecar

    # a repair localizes: the source's IR is exported (or found cached) in a worker of its own
    # before the repair's worker loads any model, so the exporter's peak is never added to it
    ahead = export_ahead(default_registry(), source, export_options(read_sidecar(target)), trust_code=trust_model_code,
                         memory_mb=memory_mb) if target is not None else None
    evidence = Path(tempfile.mkdtemp(prefix="convrepair-evidence-"))  # the worker's held-out outputs, for us to judge
    try:
        with StagedOutputs(force=force) as staged:
            staged_out = staged.place(out)  # the worker writes here; we move it into place
            config.evidence_dir = evidence if target is not None else None

            def job(send) -> dict:  # runs in the contained worker: every model is loaded there
                if ahead is not None:
                    from convrepair import ircache

                    ircache.use(ahead.cache)
                with using(ForwardingProgress(send)):  # the parent shows it (stderr, terminals only)
                    if target is None:
                        from convrepair.repair.model_repair import run_model_repair

                        result = run_model_repair(default_registry(), source, previous, staged_out, config)
                        return {"payload": result, "exit": 0 if result["verdict"] == "repaired" else 1}
                    report = run_repair(default_registry(), source, target, staged_out, config)
                    return {"payload": report.to_json(), "exit": 0 if report.succeeded else 1}

            with using(for_terminal(json_out, quiet=not human(json_out))) as progress:
                result, containment = run_contained(job, reads=[source, target, previous, data, *(ahead.reads if ahead else [])],
                                                    writes=[*staged.writes(), evidence], on_message=relay(progress),
                                                    trust_code=trust_model_code, memory_mb=memory_mb)
            payload, code = result["payload"], result["exit"]
            if target is not None:  # the verdict that is signed is ours, from the arrays, never the worker's word
                from convrepair.repair.parent import judge_repair

                payload, code, publish = judge_repair(payload, evidence, config)
            else:
                publish = payload.get("output") is not None
            if publish:
                staged.publish(expected=_companions_of(target, out))
            payload = staged.relocate(payload)
            if publish and target is not None:
                from convrepair.repair.parent import hash_output

                payload = hash_output(payload, out)
    finally:
        shutil.rmtree(evidence, ignore_errors=True)
    payload = payload | {"containment": containment.to_json()}
    emit_json(json_out, payload)
    if human(json_out):
        if target is None:
            from convrepair.report.terminal import render_model_repair

            render_model_repair(payload)
        else:
            render_repair(payload)
        say(containment.summary(), json_out)
    signed = sign(payload)
    if target is not None:
        after_repair(payload, signed, out, json_out)
    raise typer.Exit(code)


def _companions_of(target: Path | None, out: Path) -> list[Path]:
    """Files the repair writes beside --out besides its sidecar: the target's kept calibration
    data, under the name the target's sidecar records (read here, as JSON: no model runs)."""
    from convrepair.sidecar import read_sidecar

    if target is None:
        return []
    try:
        sidecar = read_sidecar(target)
    except Exception:  # noqa: BLE001 - the worker read it too; a broken sidecar just means no companion
        return []
    names = [step.details.get("calibration_file") for step in (sidecar.steps if sidecar else [])]
    return [Path(out).absolute().parent / Path(name).name for name in names if name]
