"""The repair's stages, each judged on the search half: the restore loop (FetaFix), the carry-back
of an IR patch into the target's own format, the precision fallback and the PSO/DE patch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from convrepair.check import CheckReport
from convrepair.errors import BadInput, exception_text
from convrepair.job import JobContext
from convrepair.localize.ir import export_options
from convrepair.repair.outcome import (Attempt, Option, better, divergence_moved, fewer_flips, inference_ms, significant_gain,
                                       violation_count)
from convrepair.repair.restore import Patch, RestoreUnavailable, restore
from convrepair.repair.transfer import CARRIERS
from convrepair.events import track
from convrepair.sidecar import write_sidecar


def carried_restores(check, search_idx, ir_before: Path, ir_after: Path, ir_check: CheckReport, target_ref,
                      before: CheckReport, workdir: Path, attempts: list[Attempt]) -> tuple[Path, CheckReport]:
    """The target in its own format with the parameters restored on its IR written in, checked
    again in that format; the target unchanged (restores un-applied) when that cannot be done."""
    from convrepair.repair.transfer import carry_back

    if Path(ir_after) == Path(ir_before):
        return target_ref.path, before
    restores = [a for a in attempts if a.applied]
    try:
        out, names, count = carry_back(ir_before, ir_after, target_ref.path, target_ref.format, workdir)
    except RestoreUnavailable as exc:
        attempts.append(Attempt("carry_back", False, str(exc)))
        out = None
    if out is not None:
        carried = check(out, search_idx, localize=False)
        if len(carried.flipped_samples) > len(ir_check.flipped_samples) or (carried.discrepant and not ir_check.discrepant):
            attempts.append(Attempt("carry_back", False, "the model with the values written back does not behave like its "
                                    f"repaired IR ({len(carried.flipped_samples)} flips vs {len(ir_check.flipped_samples)})"))
            out = None
    if out is None:
        for attempt in restores:
            attempt.applied = False
        return target_ref.path, before
    carried.localization = ir_check.localization
    attempts.append(Attempt("carry_back", True, f"wrote the repaired values into the {target_ref.format} model's {', '.join(names)}",
                            Patch("carry_back", ", ".join(names), count,
                                  f"parameters repaired on the ONNX IR, written into the {target_ref.format} model"),
                            carried.pooled.label_agreement, violation_count(carried), applied=True))
    return out, carried


def patch_written_back(ir: Path, patched_ir: Path, target: Path, target_format: str, workdir: Path, patch,
                       attempts: list[Attempt], started: float | None = None) -> Path | None:
    """A patch found on a model's ONNX IR written into the model's own format; None (and a refused
    attempt) when it cannot be."""
    from convrepair.repair.transfer import carry_patch

    try:
        return carry_patch(ir, patched_ir, target, target_format, workdir, patch)
    except RestoreUnavailable as exc:
        attempts.append(Attempt("pso_patch", False, f"the patch found on the ONNX IR cannot be written back: {exc}",
                                seconds=time.perf_counter() - started if started is not None else 0.0))
        return None


def check_own(check, candidate: Path, search_idx, localize: bool, attempts: list[Attempt], kind: str,
               t0: float) -> CheckReport | None:
    """Check a model this repair wrote. If it cannot even run, that is this repair's failure (an
    attempt refused, saying why), never "bad input": the user gave us no such file."""
    from convrepair.errors import ConvrepairError

    try:
        return check(candidate, search_idx, localize=localize)
    except ConvrepairError as exc:
        reason = exc.one_line().replace(str(candidate), candidate.name)
        attempts.append(Attempt(kind, False, f"the model this attempt wrote does not run: {reason}",
                                seconds=time.perf_counter() - t0))
        return None


def pso_attempt(job: JobContext, check, source, target, current_path, current_check, dataset, search_idx, workdir,
                 attempts, config, source_ir_path=None, current_ir=None):
    """Search a small weight patch on the last dense layer (Arachne/NeuRecover) where labels flip."""
    import onnx

    from convrepair.repair.patch import last_dense_layer
    from convrepair.repair.pso import SearchConfig
    from convrepair.repair.restore import RestoreUnavailable
    from convrepair.repair.search import labels_of, search_patch

    target_ref, target_sidecar = target.ref, target.sidecar
    if target_ref.format not in ("onnx", *CARRIERS):
        attempts.append(Attempt("pso_patch", False, f"patches are written to {', '.join(('onnx', *CARRIERS))} targets; "
                                                    f"this target is {target_ref.format}"))
        return current_path, current_check
    search = dataset.take(search_idx)
    t0 = time.perf_counter()
    wanted = labels_of(job.runner(source), search)
    current = job.model(current_path)
    current_labels = labels_of(job.runner(current), search)
    layouts = [spec.layout for spec in job.runner(current).inputs]
    if not (current_labels != wanted).any():
        attempts.append(Attempt("pso_patch", False, "no label flips on the search split: a patch search has nothing to fix"))
        return current_path, current_check
    first = search.take(np.arange(min(64, len(search))))
    try:
        if source_ir_path is None:  # not exported yet by the restore stage
            source_ir_path = job.onnx_ir(source, first, export_options(target_sidecar)).path
        source_weight = last_dense_layer(job.graph(source_ir_path)[1]).weight
    except Exception:  # noqa: BLE001 - without the source's weights the search runs without history
        source_weight = None
    budget = SearchConfig(budget_seconds=config.budget_seconds, seed=config.seed, device=config.device)
    # a .pt2 or Keras target is patched on its ONNX IR (the restore stage's, when it made one),
    # then the patch is written into it
    work = current_path if target_ref.format == "onnx" else current_ir or job.onnx_ir(
        current, first, export_options(target_sidecar)).path
    try:
        model, patch, stats = search_patch(onnx.load(str(work)), source_weight, search, layouts, wanted, current_labels,
                                           budget, config.optimiser)
    except RestoreUnavailable as exc:
        attempts.append(Attempt("pso_patch", False, str(exc), seconds=time.perf_counter() - t0))
        return current_path, current_check
    candidate = workdir / "pso_patch.onnx"
    onnx.save(model, str(candidate))
    if target_ref.format != "onnx":
        candidate = patch_written_back(work, candidate, current_path, target_ref.format, workdir, patch, attempts, t0)
        if candidate is None:
            return current_path, current_check
    if target_sidecar is not None:
        write_sidecar(candidate, target_sidecar)
    result = check_own(check, candidate, search_idx, False, attempts, "pso_patch", t0)
    if result is None:
        return current_path, current_check
    # the held-out check bounds what a patch may break; on the search split fewer flips is enough
    accepted, reason, broken = fewer_flips(current_check, result, refusal="the patch does not reduce the flips")
    attempts.append(Attempt("pso_patch", accepted, reason, patch, result.pooled.label_agreement, violation_count(result),
                            broken, time.perf_counter() - t0, stats))
    return (candidate, result) if accepted else (current_path, current_check)


def precision_fallback(registry, check, search_idx, current_path, current_check, source_ir_path, target_sidecar,
                        target_path, workdir, attempts, config, selection=None) -> Option | None:
    """Re-run the lossy conversion keeping layers in fp32. Which layers: the candidates
    localization ranks (the layers that add the most error, twice `max_fp32_layers` of them) are
    each measured alone — re-converted with that one layer in fp32 and checked on the search
    split — and then kept cumulatively in the order of that measured gain, until the search split
    is equivalent or `max_fp32_layers` are spent. A set is kept only when it helps on the search
    split and its gain on the selection split (`selection(path)` → failing samples, discrepant)
    is beyond its bound (`outcome.significant_gain`). Returns the best such candidate, or None.

    Bounded by `--budget-seconds` from its start (each step re-converts and checks the model: on a
    real network minutes): no step starts past it, and the attempt that stops says so
    (`cost.stopped_by_budget`); what was found before stands as an option, judged like any other."""
    from convrepair.repair.precision import lossy_step, over_budget, requantize, sensitivity_ranking

    step = lossy_step(target_sidecar)
    if step is None:
        attempts.append(Attempt("precision_fallback", False, "the target's sidecar names no re-runnable lossy step"))
        return None
    started = time.perf_counter()
    inference_before = inference_ms(current_path)
    candidates = sensitivity_ranking(current_check.localization or {"layers": []})[: 2 * config.max_fp32_layers]

    def convert(keep: list[str], name: str, t0: float) -> Path | None:
        candidate = workdir / name
        try:  # the calibration data lies beside the target as converted, not beside a restored copy
            requantize(registry, source_ir_path, candidate, step, keep, target_path)
        except BadInput as exc:
            attempts.append(Attempt("precision_fallback", False, exc.one_line(), seconds=time.perf_counter() - t0))
            return None
        except Exception as exc:  # noqa: BLE001 - a converter failing here refuses the fallback, not the repair
            attempts.append(Attempt("precision_fallback", False, f"{type(exc).__name__}: {exception_text(exc, 200)}",
                                    seconds=time.perf_counter() - t0))
            return None
        write_sidecar(candidate, target_sidecar)
        return candidate

    sensitivity: list[dict] = []
    if len(candidates) > 1:  # measured, not guessed: each candidate alone in fp32
        for index, layer in enumerate(track(candidates, "precision fallback: measuring each layer in fp32")):
            if over_budget(started, config.budget_seconds, "measured alone in fp32", candidates[:index], candidates, attempts):
                return None
            t0 = time.perf_counter()
            probe = convert([layer], f"probe_{index}.onnx", t0)
            if probe is None:
                return None
            result = check_own(check, probe, search_idx, False, attempts, "precision_fallback", t0)
            if result is None:
                return None
            sensitivity.append({"layer": layer, "flips": len(result.flipped_samples), "violations": violation_count(result),
                                "max_abs": result.pooled.max_abs})
        order = [row["layer"] for row in sorted(sensitivity, key=lambda r: (r["flips"], r["violations"], r["max_abs"]))]
    else:
        order = candidates
    best: Option | None = None
    best_selection = selection(Path(current_path)) if selection is not None else None
    keep: list[str] = []
    planned = order[: config.max_fp32_layers]
    for layer in track(planned, "precision fallback: layers kept in fp32"):
        if over_budget(started, config.budget_seconds, "kept in fp32", keep, planned, attempts):
            break
        keep.append(layer)
        t0 = time.perf_counter()
        candidate = convert(list(keep), f"fallback_{len(keep)}.onnx", t0)
        if candidate is None:
            return best
        result = check_own(check, candidate, search_idx, False, attempts, "precision_fallback", t0)
        if result is None:
            return best
        accepted, reason, new = better(current_check, result)  # closer, with no new flips
        if not accepted:
            accepted, reason, new = fewer_flips(current_check, result, config.max_break_rate)  # or fewer flips within the break rate
        reason = f"search split: {reason}" + (f"; still discrepant (max |Δ| {result.pooled.max_abs:.3g})" if result.discrepant
                                               else "; equivalent on the search split")
        chosen = None
        if accepted and best_selection is not None:
            chosen = selection(candidate)
            gained, why = significant_gain(best_selection, chosen)
            accepted, reason = gained, f"{reason}; selection split: {why}"
        cost = {"layers_kept_fp32": list(keep), "bytes": candidate.stat().st_size, "bytes_before": Path(current_path).stat().st_size,
                "inference_ms": inference_ms(candidate), "inference_ms_before": inference_before,
                "sensitivity": sensitivity or None}
        patch = Patch("precision_fallback", ", ".join(keep), 0, f"re-ran {step.converter} keeping {keep} in fp32")
        attempt = Attempt("precision_fallback", accepted, reason, patch, result.pooled.label_agreement,
                          violation_count(result), new, time.perf_counter() - t0, cost)
        attempts.append(attempt)
        if accepted:
            best = Option("precision_fallback", candidate, result, attempt)
            best_selection = chosen if chosen is not None else best_selection
        if not result.discrepant:
            break
    return best


def restore_loop(job, check, search_idx, target_path, before, source_view, target_sidecar, workdir, attempts, config):
    """Restores one after the other, each checked and localized again. Never bounded by the
    search budget: a localized restore-class fault is always put back."""
    import onnx

    current_path, current_check = target_path, before
    for index in track(range(config.max_restores), "restore attempts (at most)"):
        if not current_check.discrepant:
            break
        loc = current_check.localization or {}
        fault = (loc.get("fault") or {}).get("type")
        if fault == "precision":
            break  # rounding, not a wrong value: the precision stage offers fallback and patch side by side
        t0 = time.perf_counter()
        try:
            model, patch = restore(_with_weights(job, Path(current_path)), source_view, loc)
        except RestoreUnavailable as exc:
            attempts.append(Attempt(f"restore_{fault}", False, str(exc), seconds=time.perf_counter() - t0))
            break
        except (KeyError, ValueError, IndexError, StopIteration, TypeError) as exc:  # evidence a restorer cannot use
            attempts.append(Attempt(f"restore_{fault}", False, f"the localized evidence does not say what to restore "
                                    f"({type(exc).__name__}: {exception_text(exc, 120)})", seconds=time.perf_counter() - t0))
            break
        candidate = workdir / f"restore_{index}.onnx"
        onnx.save(model, str(candidate))
        if target_sidecar is not None:
            write_sidecar(candidate, target_sidecar)
        result = check_own(check, candidate, search_idx, True, attempts, patch.kind, t0)
        if result is None:
            break
        accepted, reason, new = better(current_check, result)
        if not accepted and result.discrepant and divergence_moved(loc, result.localization):
            # Several faults: fixing the first can shuffle labels while a later fault dominates.
            # The layer-wise view decides; the held-out check at the end still has the last word.
            accepted, reason = True, f"the repaired layer now agrees; divergence moved downstream ({reason})"
        attempts.append(Attempt(patch.kind, accepted, reason, patch, result.pooled.label_agreement,
                                violation_count(result), new, time.perf_counter() - t0))
        if not accepted:
            job.release(job.model(candidate))
            break
        attempts[-1].applied = True
        current_path, current_check = candidate, result
    return current_path, current_check


def _with_weights(job, path: Path):
    """The graph a restore edits, with its weights: a large IR's job graph is parsed without them
    (convrepair.lean_onnx), and a candidate saved from it would lose its data file."""
    import onnx

    from convrepair import lean_onnx

    return onnx.load(str(path)) if lean_onnx.is_large(path) else job.graph(path)[0]
