"""`convrepair repair`: repair a converted model and prove the repair on held-out samples.

Data is split once (seeded; the samples the target fails on the whole data dealt to every part on
their own, `outcome.three_splits`) into three disjoint parts (`outcome.SPLITS`): a search split, on which
localization and every attempt are judged; a selection split, which picks between the options
(restored model, precision fallback, patch) and keeps fallback layers; and a held-out split that
only the final judgement sees. Restores (FetaFix) are tried first: after each one the model is
checked and localized again, because a conversion can carry several faults; a restore is kept
only if agreement improves and no sample that agreed now disagrees. Precision faults get the
precision fallback. The verdict (`outcome.final_verdict`) is a pure function of held-out counts
taken from the models' outputs, which the worker also leaves as arrays for the parent to judge
again. The result is a `RepairReport`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from convrepair.check import CheckConfig, CheckReport, check_models, job_dataset
from convrepair.errors import BadInput
from convrepair.fsutil import atomic_output, combined_digest, file_digests
from convrepair.job import JobContext, opened
from convrepair.localize.ir import export_options
from convrepair.plugins import PluginRegistry
from convrepair.repair.cost import repair_cost
from convrepair.repair.outcome import (PREFERENCES, STRATEGIES, Attempt, Option, RepairConfig, RepairReport, choose_option,
                                       SplitView, failing_samples, fault_type_of, final_verdict, samples_needed,
                                       strata_of, three_splits)
from convrepair.repair.stages import carried_restores, precision_fallback, pso_attempt, restore_loop
from convrepair.repair.transfer import CARRIERS
from convrepair.sidecar import ConversionStep, read_sidecar, write_sidecar


def run_repair(registry: PluginRegistry, source_path: Path, target_path: Path, out: Path, config: RepairConfig,
               job: JobContext | None = None) -> RepairReport:
    """Paths and a config in, a report out; every model lives in one `JobContext` for the whole job."""
    with opened(job, registry) as ctx:
        return repair_models(ctx, source_path, target_path, out, config)


def repair_models(job: JobContext, source_path: Path, target_path: Path, out: Path, config: RepairConfig) -> RepairReport:
    started = time.perf_counter()
    if config.strategy not in STRATEGIES:
        raise BadInput(f"unknown strategy '{config.strategy}' ({', '.join(STRATEGIES)})")
    if config.prefer not in PREFERENCES:
        raise BadInput(f"unknown preference '{config.prefer}' ({', '.join(PREFERENCES)})")
    if not 0.0 < config.max_flip_rate < 1.0:
        raise BadInput(f"max_flip_rate must lie between 0 and 1 (exclusive), not {config.max_flip_rate:g}")
    if config.budget_seconds < 0:
        raise BadInput(f"budget_seconds must not be negative, not {config.budget_seconds:g}")
    source, target = job.model(source_path), job.model(target_path)
    source_ref, target_ref, target_sidecar = source.ref, target.ref, target.sidecar
    if Path(out).resolve() in (source_ref.path.resolve(), target_ref.path.resolve()):
        raise BadInput("--out must not overwrite the source or the target", out)
    base = CheckConfig(data=config.data, rounds=config.rounds, samples=config.samples, seed=config.seed)
    dataset = job_dataset(job, source, base)
    whole = whole_check(job, source, target, config, len(dataset))
    splits = three_splits(len(dataset), config.seed, failing_samples(whole))
    if any(not len(idx) for idx in splits.values()):
        raise BadInput(f"repair splits the data into search, selection and held-out samples and needs at least 3 "
                       f"(better {samples_needed(config.max_flip_rate) * 5 // 2} or more); the data has {len(dataset)}",
                       config.data)
    search_idx, selection_idx, held_idx = splits["search"], splits["selection"], splits["held_out"]

    def check(path: Path, subset, localize=None, every_sample: bool = True) -> CheckReport:
        """One round over every sample of the split, so each counts once and a flip the split was
        dealt is seen (sampled rounds drew 500 of the search split's 719 and could miss the one
        flip it holds); random inputs are drawn rounds × samples at a time and their rounds cover
        every split already."""
        whole = every_sample and config.data is not None
        rounds, samples = (1, max(len(subset), 1)) if whole else (config.rounds, config.samples)
        cfg = CheckConfig(data=config.data, rounds=rounds, samples=samples, seed=config.seed,
                          subset=subset, localize=localize, atol=config.atol, rtol=config.rtol)
        return check_models(job, source, job.model(path), cfg)

    def select(path: Path, subset=selection_idx, localize=False, every_sample=True) -> CheckReport:
        return check(path, subset, localize, every_sample)

    before = check(target_ref.path, search_idx, localize=True)
    attempts: list[Attempt] = []
    workdir = Path(tempfile.mkdtemp(prefix="convrepair-repair-", dir=job.workdir))
    final_path, final_check = target_ref.path, before
    choice = None
    options_ir = export_options(target_sidecar)
    source_ir_path = current_ir = None  # current_ir: the ONNX IR of final_path, when one was made
    if before.discrepant and config.strategy in ("auto", "restore"):
        if target_ref.format not in ("onnx", *CARRIERS):
            attempts.append(Attempt("restore", False, f"restores are written to {', '.join(('onnx', *CARRIERS))} "
                                                      f"targets; this target is {target_ref.format}"))
        else:
            sample = dataset.take(search_idx[:64])
            source_ir_path = job.onnx_ir(source, sample, options_ir).path
            source_view = job.graph(source_ir_path)[1]
            # a .pt2 or Keras target is repaired on its ONNX IR (the graph localization named), then carried back
            work_target = target_ref.path if target_ref.format == "onnx" else job.onnx_ir(target, sample, options_ir).path
            final_path, final_check = restore_loop(
                job, check, search_idx, work_target, before, source_view, target_sidecar, workdir, attempts, config,
            )
            if target_ref.format != "onnx":
                ir_final = final_path
                final_path, final_check = carried_restores(check, search_idx, work_target, ir_final, final_check,
                                                            target_ref, before, workdir, attempts)
                current_ir = work_target if final_path == target_ref.path else ir_final
    # every model that changed is an option: the restored model, the precision fallback (exact,
    # slower) for rounding faults, a PSO patch (keeps the fast model); the selection split picks
    options: list[Option] = []
    if final_path != target_ref.path:
        options.append(Option("restore", Path(final_path), final_check, next(a for a in reversed(attempts) if a.applied)))
    if final_check.discrepant and target_ref.format == "onnx" and fault_type_of(final_check) == "precision":
        if source_ir_path is None:
            source_ir_path = job.onnx_ir(source, dataset.take(search_idx[:64]), options_ir).path
        fallback = precision_fallback(job.registry, check, search_idx, final_path, final_check, source_ir_path,
                                       target_sidecar, target_ref.path, workdir, attempts, config,
                                       selection=lambda path: split_view(job, source, select(path), path, base, selection_idx))
        if fallback is not None:
            options.append(fallback)
    if final_check.discrepant and config.strategy in ("auto", "pso"):
        patched = pso_attempt(job, check, source, target, final_path, final_check, dataset, search_idx, workdir,
                               attempts, config, source_ir_path, current_ir)
        if patched[0] != final_path:
            options.append(Option("pso_patch", *patched, attempts[-1]))
    chosen = options[0] if options else None
    if len(options) > 1:
        selected = {option.kind: select(option.path) for option in options}
        choice = choose_option(options, selected, select(target_ref.path), target_ref.path, config.prefer)
        chosen = next(option for option in options if option.kind == choice["chosen"])
    if chosen is not None:
        _mark_applied(attempts, chosen)
        final_path, final_check = chosen.path, chosen.search_check
    held_before = select(target_ref.path, held_idx)
    after = select(chosen.path, held_idx) if chosen is not None else None
    held, evidence = held_out_evidence(job, source, target, chosen.path if chosen else None, held_before, after, dataset,
                                       held_idx, base, config)
    ruling = final_verdict(held, config.max_flip_rate, config.accept_improvement, config.max_break_rate)
    verdict = ruling.verdict
    strata = strata_of(whole, splits)
    vanished = set(strata["dealt"]["held_out"]) - set(held.failing_before)
    if vanished and strata["batch_dependent"]:
        ruling.reason += (f"; {len(vanished)} held-out sample(s) that failed when the whole data ran do not fail when the "
                          f"held-out split runs on its own: the target's outputs depend on the batch")
    output = None
    if verdict in ("repaired", "improved", "unproven") and chosen is not None or (verdict == "already_equivalent" and config.force):
        output = _write_output(job.registry, chosen.path if chosen is not None and verdict != "already_equivalent" else target_ref.path,
                               out, target_ref, target_sidecar, attempts)
    cost = repair_cost(job, target, chosen.path if chosen is not None else None, dataset, held_idx,
                       (chosen.attempt.cost or {}).get("layers_kept_fp32") if chosen is not None else None)
    models = [("source", source_ref.path), ("target", target_ref.path)]
    if output is not None and chosen is not None and verdict in ("repaired", "improved", "unproven"):
        models.append(("repaired", Path(output["path"])))
    lenses = look_through(job.registry, models, dataset, held_idx, search_idx, config, job)
    return RepairReport(
        source={"path": str(source_ref.path), "format": source_ref.format, "sha256": source_ref.sha256},
        target={"path": str(target_ref.path), "format": target_ref.format, "sha256": target_ref.sha256},
        output=output,
        verdict=verdict,
        check_before=before.to_json(),
        attempts=attempts,
        check_after=after.to_json() if after is not None else None,
        check_before_held_out=held_before.to_json(),
        splits={name: int(len(idx)) for name, idx in splits.items()},
        seconds=time.perf_counter() - started,
        device="cpu",
        strategy=config.strategy,
        lenses=lenses,
        choice=choice,
        stages=_stages(before, attempts, config),
        job={"models_resolved": job.counts["resolve"], "models_loaded": job.counts["load"], "onnx_exports": job.counts["export"]},
        verdict_reason=ruling.reason,
        samples_needed=ruling.samples_needed,
        held_out=held.to_json(),
        max_flip_rate=config.max_flip_rate,
        cost=cost,
        evidence=evidence,
        strata=strata,
    )


def whole_check(job: JobContext, source, target, config: RepairConfig, total: int) -> CheckReport:
    """The target against the source on every sample, once, before the data is split: which
    samples fail decides nothing but how the failing ones are dealt to the splits."""
    cfg = CheckConfig(data=config.data, rounds=1 if config.data is not None else config.rounds,
                      samples=total if config.data is not None else config.samples, seed=config.seed,
                      localize=False, atol=config.atol, rtol=config.rtol)
    return check_models(job, source, target, cfg)


def _mark_applied(attempts: list[Attempt], chosen: Option) -> None:
    """Only what is in the written model is `applied`: a fallback re-converts from the source, so
    the restores before it are not in it; a patch is searched on the restored model, so they are."""
    if chosen.kind == "precision_fallback":
        for attempt in attempts:
            attempt.applied = False
    chosen.attempt.applied = True


def split_view(job: JobContext, source, report: CheckReport, path: Path, base: CheckConfig, subset) -> SplitView:
    """`path` against the source on a split, sample by sample, from the outputs its check ran."""
    from dataclasses import replace

    from convrepair.repair.evidence import failing_mask

    split = job_dataset(job, source, replace(base, subset=subset))
    every = np.arange(len(split))
    mask = failing_mask(job.outputs(source, split, every), job.outputs(job.model(path), split, every),
                        job.output_names(source), report.tolerance, report.classifier)
    return SplitView({int(i) for i in np.asarray(subset)[mask]}, report.discrepant, int(len(split)))


def held_out_evidence(job: JobContext, source, target, repaired_path: Path | None, held_before: CheckReport,
                      after: CheckReport | None, dataset, held_idx, base: CheckConfig, config: RepairConfig):
    """The held-out counts from the three models' outputs on the held-out split (the arrays the
    held-out checks compared, from the job's cache), written for the parent when it asked."""
    from dataclasses import replace

    from convrepair.repair.evidence import held_out_from_arrays, write_evidence

    held_set = job_dataset(job, source, replace(base, subset=held_idx))
    every = np.arange(len(held_set))
    outputs = {"source": job.outputs(source, held_set, every), "target": job.outputs(target, held_set, every)}
    if repaired_path is not None:
        outputs["repaired"] = job.outputs(job.model(repaired_path), held_set, every)
    names = job.output_names(source)
    inconclusive = list(held_before.inconclusive) + (list(after.inconclusive) if after is not None else [])
    held = held_out_from_arrays(outputs["source"], outputs["target"], outputs.get("repaired"), held_idx, names,
                                held_before.tolerance, held_before.classifier, inconclusive)
    if config.evidence_dir is None:
        return held, None
    write_evidence(Path(config.evidence_dir), outputs, held_idx, names, held_before.tolerance.to_json(),
                   held_before.classifier, inconclusive)
    return held, str(config.evidence_dir)


def _stages(before: CheckReport, attempts: list[Attempt], config: RepairConfig) -> list[dict[str, Any]]:
    """Which repair stages ran, which did not, and why: nothing is skipped for time but the
    search, which `--budget-seconds` bounds (a search cut short by it says so)."""
    kinds = [a.kind for a in attempts]
    ran_restore = any(k.startswith(("restore", "insert")) or k == "carry_back" for k in kinds)
    stages = [{"stage": "restore", "ran": ran_restore,
               "note": None if ran_restore else ("the target is not discrepant" if not before.discrepant else
                                                 "the fault is not one a restore puts back" if config.strategy != "pso" else
                                                 "--strategy pso")}]
    fallback = [a for a in attempts if a.kind == "precision_fallback"]
    cut_fallback = next((a for a in fallback if (a.cost or {}).get("stopped_by_budget")), None)
    stages.append({"stage": "precision_fallback", "ran": bool(fallback),
                   "note": cut_fallback.reason if cut_fallback else None if fallback else "no precision fault left"})
    search = [a for a in attempts if a.kind == "pso_patch"]
    cut = next((a for a in search if (a.cost or {}).get("stopped_by_budget")), None)
    stages.append({"stage": "search", "ran": bool(search),
                   "note": (f"stopped by --budget-seconds {config.budget_seconds:g} after {cut.cost.get('iterations')} iterations"
                            if cut else None if search else "nothing left to search for")})
    return stages


def look_through(registry, models: list[tuple[str, Path]], dataset, held_idx, search_idx, config: RepairConfig, job=None):
    """The reliability lenses on the held-out half (temperature fitted on the search half)."""
    if config.lenses is None:
        return None
    from convrepair.lenses import run_lenses_on_files

    return run_lenses_on_files(registry, models, dataset, held_idx, config.lenses, fit_idx=search_idx, job=job).to_json()


def _write_output(registry, final_path: Path, out: Path, target_ref, target_sidecar, attempts) -> dict[str, Any]:
    """The repaired (or unchanged) model at `out`, written atomically, with its sidecar."""
    out = Path(out)
    with atomic_output(out) as tmp:
        if Path(final_path).is_dir():
            shutil.copytree(final_path, tmp)
        else:
            shutil.copy2(final_path, tmp)
    digests = file_digests(out)
    ref = {"path": str(out), "format": target_ref.format, "sha256": combined_digest(digests), "files": digests}
    sidecar = read_sidecar(target_ref.path) if target_sidecar is not None else None
    _copy_calibration(sidecar, target_ref.path, out)
    if sidecar is not None:
        sidecar.steps.append(ConversionStep(
            converter="convrepair-repair", tool="convrepair", tool_versions={"convrepair": _version()},
            options={}, source_format=target_ref.format, output_format=target_ref.format, seconds=0.0,
            details={"target_sha256": target_ref.sha256, "patches": [a.patch.to_json() for a in attempts if a.applied and a.patch]},
        ))
        sidecar.output = ref
        write_sidecar(out, sidecar)
    return ref


def _copy_calibration(sidecar, target: Path, out: Path) -> None:
    """Calibration data kept beside the target goes beside the output too (a later fallback needs it);
    the step keeps its recorded name, so the copy takes that name in the output's directory."""
    for step in sidecar.steps if sidecar else []:
        name = step.details.get("calibration_file")
        if name and (Path(target).with_name(name)).is_file() and Path(out).parent != Path(target).parent:
            with atomic_output(Path(out).with_name(name)) as tmp:
                shutil.copy2(Path(target).with_name(name), tmp)


def _version() -> str:
    from convrepair import __version__

    return __version__
