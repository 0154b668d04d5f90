"""`convrepair check`: sampled comparison of a source and a converted model, then localization.

Like FetaFix, the models are compared on R seeded rounds of N samples, not one batch; rounds do
not overlap while the data allows. Both models run once over the samples every round draws
(`evidence.gather`); the one judge (`judge`) decides from those tensors alone (`judge_evidence`),
so a parent process can judge what a contained worker handed back. Differences found make the
check `discrepant`; without any, a source that ignores the data or data outside the declared
range make it `inconclusive`. The result is one `CheckReport`, serialisable as `convrepair.check/v1`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.compare import Accumulator, Comparison, clopper_pearson, pool
from convrepair.data import Dataset, load_npz, random_inputs
from convrepair.errors import BadInput
from convrepair.events import stage
from convrepair.evidence import Evidence, distinct, gather
from convrepair.job import JobContext, ModelHandle, opened
from convrepair.judge import (  # noqa: F401 - re-exported
    DataFacts,
    Tolerance,
    batch_dependence,
    classifier_of,
    default_tolerance,
    guard,
    guard_notes,
    judge,
    needs_floor,
    noise_floor,
    tolerance_for,
    verdict,
)
from convrepair.model import ModelRef
from convrepair.plugins import PluginRegistry
from convrepair.sidecar import NOISE_RANGE, Sidecar, noise_origin, recorded_range

if TYPE_CHECKING:
    from convrepair.lenses import LensConfig

SCHEMA = "convrepair.check/v1"


@dataclass
class CheckConfig:
    data: Path | None = None
    rounds: int = 5
    samples: int = 100
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    top_k: int = 1
    localize: bool | None = None  # None: localize when discrepant
    batch_size: int = 64  # at most; fewer where the memory budget says so (ORT's arena keeps what a batch grew it to)
    subset: np.ndarray | None = None  # restrict sampling to these data indices (repair's splits)
    lenses: LensConfig | None = None  # reliability lenses to run on the sampled data
    output_atol: dict[str, float] = field(default_factory=dict)  # per source output name (--atol NAME:VALUE)
    output_rtol: dict[str, float] = field(default_factory=dict)
    memory_mb: int | None = None  # what one batch may take (None: a share of the machine's free memory)
    latent: bool | None = None  # latent-fault audit: None when the IRs are at hand, True always (--strict)


@dataclass
class RoundResult:
    seed: int
    n: int
    label_agreement: float | None
    topk_agreement: float | None
    max_abs: float
    max_rel: float
    cosine_min: float

    @classmethod
    def of(cls, seed: int, comparison: Comparison) -> RoundResult:
        return cls(
            seed=seed,
            n=comparison.n,
            label_agreement=comparison.label_agreement,
            topk_agreement=comparison.topk_agreement,
            max_abs=comparison.max_abs,
            max_rel=comparison.max_rel,
            cosine_min=comparison.cosine_min,
        )


@dataclass
class CheckReport:
    source: ModelRef
    target: ModelRef
    verdict: str
    samples: int
    rounds: list[RoundResult]
    pooled: Comparison
    tolerance: Tolerance
    data: str
    top_k: int
    seconds: float
    reasons: list[str] = field(default_factory=list)
    localization: dict[str, Any] | None = None
    flipped_samples: list[int] = field(default_factory=list)
    lenses: dict[str, Any] | None = None
    inconclusive: list[str] = field(default_factory=list)  # the guard's reasons (beside the evidence when discrepant)
    guard_notes: list[str] = field(default_factory=list)  # what the guard could not check (no recorded input range)
    classifier: bool = True
    batch_dependent: dict[str, Any] = field(default_factory=lambda: batch_dependence([], None, False))
    evidence: dict[str, str] = field(default_factory=dict)  # evidence file → sha256, when judged across processes
    provenance: dict[str, list[str]] | None = None  # which fields the parent computed, which the worker reported
    worker_reported: dict[str, Any] = field(default_factory=dict)  # diagnostics a contained worker computed

    @property
    def discrepant(self) -> bool:
        return self.verdict == "discrepant"

    @property
    def conclusive(self) -> bool:
        return self.verdict != "inconclusive"

    @property
    def distinct(self) -> int:
        """Distinct samples behind the pooled figures (the bound counts each sample once)."""
        return self.pooled.distinct or self.pooled.n

    def to_json(self) -> dict[str, Any]:
        pooled = self.pooled
        accuracy = None
        if pooled.source_correct is not None and pooled.n:
            accuracy = {"source": pooled.source_correct / pooled.n, "target": pooled.target_correct / pooled.n}
        return {
            "schema": SCHEMA,
            "source": _ref_json(self.source),
            "target": _ref_json(self.target),
            "verdict": self.verdict,
            "reasons": self.reasons,
            "data": self.data,
            "samples": self.samples,
            "rounds": [r.__dict__ for r in self.rounds],
            "label_agreement": pooled.label_agreement,
            "topk_agreement": pooled.topk_agreement,
            "top_k": self.top_k,
            "flips": self.flipped_samples,
            "classifier": self.classifier,
            "inconclusive_reasons": self.inconclusive,
            "distinct_samples": self.distinct,
            "disagreement_interval": list(clopper_pearson(len(pooled.flips), self.distinct))
            if pooled.label_agreement is not None else None,
            "disagreement_upper_bound": clopper_pearson(len(pooled.flips), self.distinct)[1]
            if pooled.label_agreement is not None
            else None,
            "accuracy": accuracy,
            "outputs": [o.to_json() for o in pooled.outputs],
            "tolerance": self.tolerance.to_json(),
            "seconds": round(self.seconds, 3),
            "localization": self.localization,
            "lenses": self.lenses,
            "batch_dependent": self.batch_dependent,
            "guard": {"reasons": self.inconclusive, "outranked_by_evidence": bool(self.inconclusive and self.reasons),
                      "notes": self.guard_notes},
            "evidence": self.evidence or None,
            "provenance": self.provenance,
        } | self.worker_reported


def _ref_json(ref: ModelRef) -> dict[str, Any]:
    return {"path": str(ref.path), "format": ref.format, "sha256": ref.sha256}


def load_dataset(config: CheckConfig, specs, sidecar: Sidecar | None) -> Dataset:
    if config.data is not None:
        return load_npz(config.data, specs)
    if any(d is None for spec in specs for d in spec.shape[1:]) or any(not spec.shape for spec in specs):
        raise BadInput("the model does not declare full input shapes; give sample data with --data")
    recorded = recorded_range(sidecar)
    noise = random_inputs(specs, config.rounds * config.samples, config.seed, recorded or NOISE_RANGE)
    noise.origin = noise_origin(recorded)
    return noise


def job_dataset(job: JobContext, source: ModelHandle, config: CheckConfig) -> Dataset:
    """The job's data (read once), restricted to `config.subset` when repair splits it."""
    base_key = ("data", str(config.data), config.rounds * config.samples if config.data is None else 0, config.seed if config.data is None else 0)
    dataset = job.dataset(base_key, lambda: load_dataset(config, job.runner(source).inputs, source.sidecar))
    if config.subset is None:
        return dataset
    subset = np.asarray(config.subset)
    return job.dataset((*base_key, "subset", hashlib.sha1(subset.astype(np.int64).tobytes()).hexdigest()),
                       lambda: dataset.take(subset))


def sampling_plan(total: int, rounds: int, samples: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """`rounds` seeded draws of `samples` indices that do not overlap while the data allows
    (one seeded permutation cut into rounds); on smaller data the draws wrap around it."""
    order = np.random.default_rng(seed).permutation(total)
    size = min(samples, total)
    out = []
    for r in range(rounds):
        start = (r * size) % total
        picked = np.take(order, np.arange(start, start + size), mode="wrap")
        out.append((seed * 1000 + r, np.sort(picked)))
    return out


def run_check(
    registry: PluginRegistry,
    source_path: Path,
    target_path: Path,
    config: CheckConfig,
    on_round: Callable[[int, int], None] | None = None,
    job: JobContext | None = None,
) -> CheckReport:
    """Paths and a config in, a report out; the models live in `job` (a fresh one when None)."""
    with opened(job, registry) as ctx:
        return check_models(ctx, ctx.model(source_path), ctx.model(target_path), config, on_round)


def check_models(
    job: JobContext,
    source: ModelHandle,
    target: ModelHandle,
    config: CheckConfig,
    on_round: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Run both models (through `job`), judge the tensors with the one judge, localize when asked."""
    started = time.perf_counter()
    validate_config(config)
    job.memory_mb = config.memory_mb or job.memory_mb
    source_inputs, target_inputs = job.runner(source).inputs, job.runner(target).inputs  # no runner held past here
    if len(source_inputs) != len(target_inputs):
        raise BadInput(f"input counts differ: source has {len(source_inputs)}, target has {len(target_inputs)}", target.ref.path)
    dataset = job_dataset(job, source, config)
    plan = sampling_plan(len(dataset), config.rounds, config.samples, config.seed)
    with stage(f"running both models on {len(distinct(plan))} samples"):
        evidence = gather(job, source, target, dataset, distinct(plan), config.batch_size,
                          needs_floor(config, target.precision))
    report = judge_evidence(evidence, plan, DataFacts.of(dataset, config.data is not None), config,
                            (source.ref, source.sidecar), (target.ref, target.sidecar), on_round)
    diagnose(job, source, target, dataset, plan, config, report)
    report.seconds = time.perf_counter() - started
    return report


def validate_config(config: CheckConfig) -> None:
    if config.rounds < 1 or config.samples < 1 or config.top_k < 1:
        raise BadInput("--rounds, --samples and --top-k must be at least 1")


def judge_evidence(evidence: Evidence, plan: list[tuple[int, np.ndarray]], data: DataFacts, config: CheckConfig,
                   source: tuple[ModelRef, Sidecar | None], target: tuple[ModelRef, Sidecar | None],
                   on_round: Callable[[int, int], None] | None = None) -> CheckReport:
    """The verdict from tensors alone: rounds pooled, tolerance, reasons, guard, batch dependence.
    The parent process calls this on what a contained worker handed back; nothing here runs a model."""
    (source_ref, source_sidecar), (target_ref, target_sidecar) = source, target
    precision = target_sidecar.precision if target_sidecar else "fp32"
    names = evidence.source_names, evidence.target_names
    classifier = classifier_of(evidence.source[0], names[0][0], source_sidecar or target_sidecar)
    floor = None
    if evidence.nudged is not None and needs_floor(config, precision):
        floor = noise_floor([s[evidence.floor_positions] for s in evidence.source], evidence.nudged, evidence.floor_method,
                            len(evidence.indices))
    tolerance = tolerance_for(config, names[0], precision, classifier, floor)
    parts: list[Comparison] = []
    rounds: list[RoundResult] = []
    for index, (seed, indices) in enumerate(plan):
        s_out, t_out = evidence.round_outputs(indices)
        acc = Accumulator(names[0], names[1], config.top_k, tolerance.atol, tolerance.rtol, classifier,
                          per_output=tolerance.per_output)
        acc.add(s_out, t_out, indices, data.labels[indices] if data.labels is not None else None)
        parts.append(acc.result())
        rounds.append(RoundResult.of(seed, parts[-1]))
        if on_round:
            on_round(index + 1, len(plan))
    pooled = pool(parts)
    reasons = judge(pooled, tolerance)
    unsure = guard(pooled, data, source_sidecar)
    batched = [t[evidence.single_positions] for t in evidence.target]
    return CheckReport(
        source=source_ref, target=target_ref, verdict=verdict(reasons, unsure), samples=pooled.n, rounds=rounds,
        pooled=pooled, tolerance=tolerance, data=data.origin, top_k=config.top_k, seconds=0.0, reasons=reasons,
        flipped_samples=pooled.flips, inconclusive=unsure, guard_notes=guard_notes(data, source_sidecar),
        classifier=bool(pooled.label_agreement is not None),
        batch_dependent=batch_dependence(batched, evidence.single, pooled.label_agreement is not None,
                                         evidence.single_error),
        evidence=dict(evidence.digests))


def diagnose(job: JobContext, source: ModelHandle, target: ModelHandle, dataset: Dataset, plan, config: CheckConfig,
             report: CheckReport) -> None:
    """Localization (when asked, or when discrepant) and the lenses: diagnostics, never the verdict."""
    if config.localize or (config.localize is None and report.discrepant):
        from convrepair.localize import localize

        try:
            report.localization = localize(job, source, target, dataset, report.pooled.flips, bool(report.reasons),
                                           config.seed).to_json()
        except BadInput as exc:  # no layer-wise view of these models (a golden file has no graph): the verdict stands
            report.localization = {"first_divergent": None, "layers": [], "shadow": None, "ir": None, "samples": None,
                                   "unaligned": {}, "static_diff": [],
                                   "fault": {"type": "unknown", "detail": f"localization unavailable: {exc.one_line()}",
                                             "evidence": {}}}
    from convrepair.localize.latent import check_latent  # differences the samples did not reveal (issue 18)

    report.worker_reported |= check_latent(job, source, target, dataset, config.latent, report.localization, config.seed)
    if config.lenses:
        report.lenses = _lenses(job, source, target, dataset, plan, config)


def _lenses(job: JobContext, source: ModelHandle, target: ModelHandle, dataset, plan, config) -> dict[str, Any]:
    """The reliability lenses on the very samples the rounds drew, with the job's runners."""
    from convrepair.lenses import LensModel, input_range_of, run_lenses

    sampled = np.unique(np.concatenate([indices for _, indices in plan]))
    models = [LensModel("source", job.runner(source), str(source.ref.path), source.ref.format),
              LensModel("target", job.runner(target), str(target.ref.path), target.ref.format)]
    return run_lenses(models, dataset, sampled, config.lenses,
                      gradients=lambda: job.registry.load_differentiable(source.ref, source.sidecar),
                      input_range=input_range_of(source.sidecar, dataset)).to_json()
