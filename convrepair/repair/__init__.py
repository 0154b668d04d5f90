"""`convrepair repair`: repair a converted model and prove the repair on held-out samples.

Data is split once (seeded) into a search half, on which localization and every attempt are
judged, and a held-out half that only the final check sees. Restores (FetaFix) are tried first:
after each one the model is checked and localized again, because a conversion can carry several
faults; a restore is kept only if agreement improves and no sample that agreed now disagrees.
Precision faults get the precision fallback. The result is a `RepairReport`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.check import CheckConfig, CheckReport, check_models, job_dataset
from convrepair.errors import BadInput, exception_text
from convrepair.fsutil import atomic_output, combined_digest, file_digests
from convrepair.job import JobContext, opened
from convrepair.localize.ir import export_options
from convrepair.plugins import PluginRegistry
from convrepair.repair.restore import Patch, RestoreUnavailable, restore
from convrepair.repair.transfer import CARRIERS
from convrepair.report.progress import track
from convrepair.sidecar import ConversionStep, read_sidecar, write_sidecar

if TYPE_CHECKING:
    from convrepair.lenses import LensConfig

SCHEMA = "convrepair.repair/v1"
STRATEGIES = ("auto", "restore", "pso")
PREFERENCES = ("auto", "fast", "exact")


@dataclass
class RepairConfig:
    data: Path | None = None
    strategy: str = "auto"
    device: str = "auto"
    budget_seconds: float = 300.0
    seed: int = 0
    rounds: int = 5
    samples: int = 100
    max_restores: int = 5
    max_fp32_layers: int = 3
    atol: float | None = None  # tolerances the repaired model must meet (default: check's)
    rtol: float | None = None
    optimiser: str = "pso"  # or "de"
    accept_improvement: bool = False  # accept fewer held-out flips without reaching equivalence
    max_break_rate: float = 0.01  # share of held-out agreeing samples a patch may break
    lenses: LensConfig | None = None  # reliability lenses over source, target and repaired model (held-out half)
    prefer: str = "auto"  # when fallback and patch both work: auto | fast (patch) | exact (fallback)


@dataclass
class Attempt:
    kind: str
    accepted: bool
    reason: str
    patch: Patch | None = None
    label_agreement: float | None = None
    violations: int | None = None
    new_flips: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cost: dict[str, Any] | None = None
    applied: bool = False  # part of the written model (accepted attempts can lose to a better one)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "accepted": self.accepted,
            "applied": self.applied,
            "reason": self.reason,
            "patch": self.patch.to_json() if self.patch else None,
            "label_agreement": self.label_agreement,
            "violations": self.violations,
            "new_flips": self.new_flips,
            "seconds": round(self.seconds, 3),
            "cost": self.cost,
        }


@dataclass
class RepairReport:
    source: dict[str, Any]
    target: dict[str, Any]
    output: dict[str, Any] | None
    verdict: str  # "repaired" | "improved" | "already_equivalent" | "not_repaired" | "inconclusive"
    check_before: dict[str, Any]
    attempts: list[Attempt]
    check_after: dict[str, Any] | None
    check_before_held_out: dict[str, Any] | None
    splits: dict[str, int]
    seconds: float
    device: str
    strategy: str
    lenses: dict[str, Any] | None = None
    choice: dict[str, Any] | None = None  # options offered side by side and the one the policy took
    stages: list[dict[str, Any]] = field(default_factory=list)  # which stages ran, and why one did not
    job: dict[str, int] | None = None  # what the job context did: models resolved, loaded, exported

    @property
    def skipped_for_time(self) -> list[str]:
        return [f"{s['stage']}: {s['note']}" for s in self.stages if s.get("note") and "budget" in s["note"]]

    @property
    def succeeded(self) -> bool:
        return self.verdict in ("repaired", "improved", "already_equivalent")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "source": self.source,
            "target": self.target,
            "output": self.output,
            "verdict": self.verdict,
            "strategy": self.strategy,
            "check_before": self.check_before,
            "attempts": [a.to_json() for a in self.attempts],
            "check_after": self.check_after,
            "check_before_held_out": self.check_before_held_out,
            "splits": self.splits,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "choice": self.choice,
            "lenses": self.lenses,
            "stages": self.stages,
            "skipped_for_time": self.skipped_for_time,
            "job": self.job,
        }


@dataclass
class Option:
    """A repair that worked on the search split, offered beside the others for the policy to pick."""

    kind: str
    path: Path
    search_check: CheckReport
    attempt: Attempt


def _violations(report: CheckReport) -> int:
    return sum(o.violations for o in report.pooled.outputs)


def _better(before: CheckReport, after: CheckReport) -> tuple[bool, str, list[int]]:
    """Keep a repair only if agreement improves and nothing that agreed now disagrees."""
    new_flips = sorted(set(after.flipped_samples) - set(before.flipped_samples))
    if new_flips:
        return False, f"{len(new_flips)} sample(s) that agreed now disagree", new_flips
    agree_before = before.pooled.label_agreement or 0.0
    agree_after = after.pooled.label_agreement or 0.0
    if agree_after < agree_before:
        return False, "label agreement fell", []
    if agree_after > agree_before or _violations(after) < _violations(before) or after.pooled.max_abs < before.pooled.max_abs * 0.5:
        return True, "agreement improved", []
    return False, "no improvement", []


def _fewer_flips(before: CheckReport, after: CheckReport, max_break_rate: float | None = None,
                 refusal: str = "no fewer flips") -> tuple[bool, str, list[int]]:
    """For repairs that trade exactness (fallback, patch): fewer flips, and the samples that agreed
    and now disagree within `max_break_rate` of the samples (no bound when None)."""
    new_flips = sorted(set(after.flipped_samples) - set(before.flipped_samples))
    fixed = len(set(before.flipped_samples) - set(after.flipped_samples))
    if len(after.flipped_samples) >= len(before.flipped_samples):
        return False, refusal, new_flips
    if max_break_rate is not None and len(new_flips) > max_break_rate * max(after.distinct, 1):
        return False, f"fixed {fixed}, but broke {len(new_flips)} (more than {max_break_rate:.0%})", new_flips
    return True, f"fixed {fixed} of {len(before.flipped_samples)} flipped sample(s), broke {len(new_flips)}", new_flips


def _divergence_moved(before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    """True when the layer localized before now agrees and the first divergence lies later."""
    if not after or not before.get("first_divergent"):
        return False
    layer = before["first_divergent"]["target_layer"]
    rows = {row["target_layer"]: row["status"] for row in after.get("layers", [])}
    order = [row["target_layer"] for row in after.get("layers", [])]
    first_after = (after.get("first_divergent") or {}).get("target_layer")
    return rows.get(layer) == "ok" and (
        first_after is None or (first_after in order and layer in order and order.index(first_after) > order.index(layer))
    )


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
    source, target = job.model(source_path), job.model(target_path)
    source_ref, target_ref, target_sidecar = source.ref, target.ref, target.sidecar
    if Path(out).resolve() in (source_ref.path.resolve(), target_ref.path.resolve()):
        raise BadInput("--out must not overwrite the source or the target", out)
    base = CheckConfig(data=config.data, rounds=config.rounds, samples=config.samples, seed=config.seed)
    dataset = job_dataset(job, source, base)
    order = np.random.default_rng(config.seed).permutation(len(dataset))
    search_idx, held_idx = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])

    def check(path: Path, subset, localize=None) -> CheckReport:
        cfg = CheckConfig(data=config.data, rounds=config.rounds, samples=config.samples, seed=config.seed,
                          subset=subset, localize=localize, atol=config.atol, rtol=config.rtol)
        return check_models(job, source, job.model(path), cfg)

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
            final_path, final_check = _restore_loop(
                job, check, search_idx, work_target, before, source_view, target_sidecar, workdir, attempts, config,
            )
            if target_ref.format != "onnx":
                ir_final = final_path
                final_path, final_check = _carried_restores(check, search_idx, work_target, ir_final, final_check,
                                                            target_ref, before, workdir, attempts)
                current_ir = work_target if final_path == target_ref.path else ir_final
    # what is left is offered as options: the precision fallback (exact, slower) for rounding
    # faults, and a PSO patch (keeps the fast model); the policy picks on the held-out half
    options: list[Option] = []
    if final_check.discrepant and target_ref.format == "onnx" and _fault_type(final_check) == "precision":
        if source_ir_path is None:
            source_ir_path = job.onnx_ir(source, dataset.take(search_idx[:64]), options_ir).path
        fallback = _precision_fallback(job.registry, check, search_idx, final_path, final_check, source_ir_path,
                                       target_sidecar, target_ref.path, workdir, attempts, config)
        if fallback is not None:
            options.append(fallback)
    if final_check.discrepant and config.strategy in ("auto", "pso"):
        patched = _pso_attempt(job, check, source, target, final_path, final_check, dataset, search_idx, workdir,
                               attempts, config, source_ir_path, current_ir)
        if patched[0] != final_path:
            options.append(Option("pso_patch", *patched, attempts[-1]))
    held_before = after = None
    if not before.conclusive:
        verdict = "inconclusive"
    elif not before.discrepant:
        verdict = "already_equivalent"
    else:
        held_before = check(target_ref.path, held_idx, localize=False)
        held = {}  # held-out checks of the options, made once
        chosen = options[0] if options else None
        if len(options) > 1:
            held = {option.kind: check(option.path, held_idx, localize=False) for option in options}
            choice = _choose(options, held, held_before, target_ref.path, config.prefer)
            chosen = next(option for option in options if option.kind == choice["chosen"])
        if chosen is not None:
            final_path, final_check = chosen.path, chosen.search_check
            chosen.attempt.applied = True
        after = held.get(chosen.kind) if chosen is not None and chosen.kind in held else (
            check(final_path, held_idx, localize=False) if final_path != target_ref.path else None)
        verdict = _verdict(held_before, after, config)
    output = None
    if verdict not in ("not_repaired", "inconclusive"):
        output = _write_output(job.registry, final_path, out, target_ref, target_sidecar, attempts)
    models = [("source", source_ref.path), ("target", target_ref.path)]
    if output is not None and verdict in ("repaired", "improved"):
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
        check_before_held_out=held_before.to_json() if held_before is not None else None,
        splits={"search": int(len(search_idx)), "held_out": int(len(held_idx))},
        seconds=time.perf_counter() - started,
        device="cpu",
        strategy=config.strategy,
        lenses=lenses,
        choice=choice,
        stages=_stages(before, attempts, config),
        job={"models_resolved": job.counts["resolve"], "models_loaded": job.counts["load"], "onnx_exports": job.counts["export"]},
    )


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
    stages.append({"stage": "precision_fallback", "ran": bool(fallback), "note": None if fallback else "no precision fault left"})
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


def _inference_ms(path: Path, batch: int = 256, repeats: int = 25) -> float:
    """Median time of one batch through ONNX Runtime on the CPU: the cost a fallback adds."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [batch if not isinstance(d, int) or i == 0 else d for i, d in enumerate(value.shape)]
        feeds[value.name] = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float16 if "float16" in value.type else np.float32)
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times)), 3)


def _carried_restores(check, search_idx, ir_before: Path, ir_after: Path, ir_check: CheckReport, target_ref,
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
                            carried.pooled.label_agreement, _violations(carried), applied=True))
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


def _check_own(check, candidate: Path, search_idx, localize: bool, attempts: list[Attempt], kind: str,
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


def _fault_type(report: CheckReport) -> str | None:
    return ((report.localization or {}).get("fault") or {}).get("type")


def _choose(options: list[Option], held: dict[str, CheckReport], held_before: CheckReport, target_path: Path, prefer: str) -> dict[str, Any]:
    """Pick one of several working repairs on the held-out half. `auto`: an equivalent one first,
    then fewer flips, then the fast one (the patch keeps the quantized model); `fast`: the patch
    whenever it improves on the target; `exact`: the fallback whenever it improves on it."""
    fast = {"pso_patch"}
    improves = {kind for kind, report in held.items()
                if len(report.flipped_samples) < len(held_before.flipped_samples)}
    rows = []
    for option in options:
        report = held[option.kind]
        rows.append({"kind": option.kind, "held_out_verdict": report.verdict,
                     "held_out_label_agreement": report.pooled.label_agreement, "held_out_flips": len(report.flipped_samples),
                     "improves": option.kind in improves, "bytes": option.path.stat().st_size,
                     "inference_ms": _inference_ms(option.path)})
    ranked = sorted(rows, key=lambda r: (not r["improves"], r["held_out_verdict"] != "equivalent", r["held_out_flips"], r["kind"] not in fast))
    if prefer in ("fast", "exact"):
        wanted = [r for r in ranked if r["improves"] and (r["kind"] in fast) == (prefer == "fast")]
        ranked = wanted + [r for r in ranked if r not in wanted]
    chosen = ranked[0]
    why = {"auto": "equivalent first, then fewer held-out flips, then the faster model",
           "fast": "the patch, which keeps the fast model, whenever it improves on the target",
           "exact": "the precision fallback whenever it improves on the target"}[prefer]
    for row in rows:
        row["chosen"] = row is chosen
    return {"policy": prefer, "why": why, "chosen": chosen["kind"], "options": rows,
            "target": {"bytes": Path(target_path).stat().st_size, "inference_ms": _inference_ms(target_path),
                       "held_out_flips": len(held_before.flipped_samples)}}


def _verdict(held_before: CheckReport, after: CheckReport | None, config: RepairConfig) -> str:
    if after is None:
        return "not_repaired"
    if not after.discrepant:
        return "repaired"
    broken = set(after.flipped_samples) - set(held_before.flipped_samples)
    agree_before, agree_after = held_before.pooled.label_agreement or 0.0, after.pooled.label_agreement or 0.0
    improved = agree_after > agree_before and len(broken) <= config.max_break_rate * max(after.distinct, 1)
    return "improved" if improved and config.accept_improvement else "not_repaired"


def _pso_attempt(job: JobContext, check, source, target, current_path, current_check, dataset, search_idx, workdir,
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
    result = _check_own(check, candidate, search_idx, False, attempts, "pso_patch", t0)
    if result is None:
        return current_path, current_check
    # the held-out check bounds what a patch may break; on the search split fewer flips is enough
    accepted, reason, broken = _fewer_flips(current_check, result, refusal="the patch does not reduce the flips")
    attempts.append(Attempt("pso_patch", accepted, reason, patch, result.pooled.label_agreement, _violations(result),
                            broken, time.perf_counter() - t0, stats))
    return (candidate, result) if accepted else (current_path, current_check)


def _precision_fallback(registry, check, search_idx, current_path, current_check, source_ir_path, target_sidecar,
                        target_path, workdir, attempts, config) -> Option | None:
    """Re-run the lossy conversion keeping the most sensitive layers in fp32, one more at a time,
    until the search split is equivalent or `max_fp32_layers` are spent. Returns the best
    candidate that improves without new flips, or None."""
    from convrepair.repair.precision import lossy_step, requantize, sensitivity_ranking

    step = lossy_step(target_sidecar)
    if step is None:
        attempts.append(Attempt("precision_fallback", False, "the target's sidecar names no re-runnable lossy step"))
        return None
    best: Option | None = None
    keep: list[str] = []
    inference_before = _inference_ms(current_path)
    for layer in track(sensitivity_ranking(current_check.localization or {"layers": []})[: config.max_fp32_layers], "precision fallback: layers kept in fp32"):
        keep.append(layer)
        candidate = workdir / f"fallback_{len(keep)}.onnx"
        t0 = time.perf_counter()
        try:  # the calibration data lies beside the target as converted, not beside a restored copy
            requantize(registry, source_ir_path, candidate, step, keep, target_path)
        except BadInput as exc:
            attempts.append(Attempt("precision_fallback", False, exc.one_line()))
            return best
        except Exception as exc:  # noqa: BLE001 - a converter failing here refuses the fallback, not the repair
            attempts.append(Attempt("precision_fallback", False, f"{type(exc).__name__}: {exception_text(exc, 200)}"))
            return best
        write_sidecar(candidate, target_sidecar)
        result = _check_own(check, candidate, search_idx, False, attempts, "precision_fallback", t0)
        if result is None:
            return best
        accepted, reason, new = _better(current_check, result)  # closer, with no new flips
        if not accepted:
            accepted, reason, new = _fewer_flips(current_check, result, config.max_break_rate)  # or fewer flips within the break rate
        cost = {"layers_kept_fp32": list(keep), "bytes": candidate.stat().st_size, "bytes_before": Path(current_path).stat().st_size,
                "inference_ms": _inference_ms(candidate), "inference_ms_before": inference_before}
        patch = Patch("precision_fallback", ", ".join(keep), 0, f"re-ran {step.converter} keeping {keep} in fp32")
        reason = f"{reason}; still discrepant (max |Δ| {result.pooled.max_abs:.3g})" if result.discrepant else "equivalent on the search split"
        attempt = Attempt("precision_fallback", accepted, reason, patch, result.pooled.label_agreement,
                          _violations(result), new, time.perf_counter() - t0, cost)
        attempts.append(attempt)
        if accepted and (best is None or (len(result.flipped_samples), _violations(result))
                         < (len(best.search_check.flipped_samples), _violations(best.search_check))):
            best = Option("precision_fallback", candidate, result, attempt)
        if not result.discrepant:
            break
    return best


def _restore_loop(job, check, search_idx, target_path, before, source_view, target_sidecar, workdir, attempts, config):
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
            model, patch = restore(job.graph(current_path)[0], source_view, loc)
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
        result = _check_own(check, candidate, search_idx, True, attempts, patch.kind, t0)
        if result is None:
            break
        accepted, reason, new = _better(current_check, result)
        if not accepted and result.discrepant and _divergence_moved(loc, result.localization):
            # Several faults: fixing the first can shuffle labels while a later fault dominates.
            # The layer-wise view decides; the held-out check at the end still has the last word.
            accepted, reason = True, f"the repaired layer now agrees; divergence moved downstream ({reason})"
        attempts.append(Attempt(patch.kind, accepted, reason, patch, result.pooled.label_agreement,
                                _violations(result), new, time.perf_counter() - t0))
        if not accepted:
            job.release(job.model(candidate))
            break
        attempts[-1].applied = True
        current_path, current_check = candidate, result
    return current_path, current_check


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
