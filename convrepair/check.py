"""`convrepair check`: sampled comparison of a source and a converted model, then localization.

Like FetaFix, the models are compared on R seeded rounds of N samples, not one batch; rounds do
not overlap while the data allows. Classifiers are judged by label agreement; fp32 outputs by the
source's own float noise (`noise`), or by the user's --atol/--rtol; other outputs by tolerances,
cosine and nearest-neighbour agreement. A check whose source does not depend on the data, or whose
data lies outside the range the model declares, is `inconclusive` (`guard`). The result is one
`CheckReport`, serialisable as `convrepair.check/v1`. Models come from a `JobContext`, so a job
resolves, loads and runs each model once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.compare import Accumulator, Comparison, check_output_counts, clopper_pearson, pool
from convrepair.data import Dataset, load_npz, random_inputs
from convrepair.errors import BadInput
from convrepair.job import JobContext, ModelHandle, opened
from convrepair.judge import Tolerance, classifier_of, default_tolerance, guard, judge, tolerance_for  # noqa: F401 - re-exported
from convrepair.model import ModelRef
from convrepair.plugins import PluginRegistry
from convrepair.report.progress import track
from convrepair.sidecar import Sidecar

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
    batch_size: int = 256
    subset: np.ndarray | None = None  # restrict sampling to these data indices (repair's splits)
    lenses: LensConfig | None = None  # reliability lenses to run on the sampled data
    output_atol: dict[str, float] = field(default_factory=dict)  # per source output name (--atol NAME:VALUE)
    output_rtol: dict[str, float] = field(default_factory=dict)


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
    inconclusive: list[str] = field(default_factory=list)  # why the check cannot conclude (the guard)
    classifier: bool = True

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
        }


def _ref_json(ref: ModelRef) -> dict[str, Any]:
    return {"path": str(ref.path), "format": ref.format, "sha256": ref.sha256}


def load_dataset(config: CheckConfig, specs, sidecar: Sidecar | None) -> Dataset:
    if config.data is not None:
        return load_npz(config.data, specs)
    if any(d is None for spec in specs for d in spec.shape[1:]) or any(not spec.shape for spec in specs):
        raise BadInput("the model does not declare full input shapes; give sample data with --data")
    input_range = sidecar.preprocessing.input_range if sidecar else (0.0, 1.0)
    return random_inputs(specs, config.rounds * config.samples, config.seed, tuple(input_range))


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
    started = time.perf_counter()
    if config.rounds < 1 or config.samples < 1 or config.top_k < 1:
        raise BadInput("--rounds, --samples and --top-k must be at least 1")
    source_runner, target_runner = job.runner(source), job.runner(target)
    if len(source_runner.inputs) != len(target_runner.inputs):
        raise BadInput(
            f"input counts differ: source has {len(source_runner.inputs)}, target has {len(target_runner.inputs)}", target.ref.path
        )
    dataset = job_dataset(job, source, config)
    plan = sampling_plan(len(dataset), config.rounds, config.samples, config.seed)
    classifier = None
    parts: list[Comparison] = []
    rounds: list[RoundResult] = []
    for index, (seed, indices) in enumerate(track(plan, "comparing rounds")):
        s_out = job.outputs(source, dataset, indices, config.batch_size)
        t_out = job.outputs(target, dataset, indices, config.batch_size)
        names = job.output_names(source), job.output_names(target)
        check_output_counts(source_runner, target_runner, dict(zip(names[0], s_out)), dict(zip(names[1], t_out)))
        if classifier is None:
            classifier = classifier_of(s_out[0], names[0][0], source.sidecar or target.sidecar)
            tolerance = tolerance_for(job, source, dataset, plan, config, classifier, target.precision)
        acc = Accumulator(names[0], names[1], config.top_k, tolerance.atol, tolerance.rtol, classifier,
                          per_output=tolerance.per_output)
        labels = dataset.labels[indices] if dataset.labels is not None else None
        acc.add(s_out, t_out, indices, labels)
        comparison = acc.result()
        parts.append(comparison)
        rounds.append(RoundResult.of(seed, comparison))
        if on_round:
            on_round(index + 1, len(plan))
    pooled = pool(parts)
    reasons = judge(pooled, tolerance)
    unsure = guard(pooled, dataset, source.sidecar, config.data is not None)
    verdict = "inconclusive" if unsure else ("discrepant" if reasons else "equivalent")
    report = CheckReport(
        source=source.ref,
        target=target.ref,
        verdict=verdict,
        samples=pooled.n,
        rounds=rounds,
        pooled=pooled,
        tolerance=tolerance,
        data=dataset.origin,
        top_k=config.top_k,
        seconds=0.0,
        reasons=reasons,
        flipped_samples=pooled.flips,
        inconclusive=unsure,
        classifier=bool(pooled.label_agreement is not None),
    )
    if config.localize or (config.localize is None and report.discrepant):
        from convrepair.localize import localize

        try:
            report.localization = localize(job, source, target, dataset, pooled.flips, bool(reasons), config.seed).to_json()
        except BadInput as exc:  # no layer-wise view of these models (a golden file has no graph): the verdict stands
            report.localization = {"first_divergent": None, "layers": [], "shadow": None, "ir": None, "samples": None,
                                   "unaligned": {}, "static_diff": [],
                                   "fault": {"type": "unknown", "detail": f"localization unavailable: {exc.one_line()}",
                                             "evidence": {}}}
    if config.lenses:
        report.lenses = _lenses(job, source, target, dataset, plan, config)
    report.seconds = time.perf_counter() - started
    return report


def _lenses(job: JobContext, source: ModelHandle, target: ModelHandle, dataset, plan, config) -> dict[str, Any]:
    """The reliability lenses on the very samples the rounds drew, with the job's runners."""
    from convrepair.lenses import LensModel, input_range_of, run_lenses

    sampled = np.unique(np.concatenate([indices for _, indices in plan]))
    models = [LensModel("source", job.runner(source), str(source.ref.path), source.ref.format),
              LensModel("target", job.runner(target), str(target.ref.path), target.ref.format)]
    return run_lenses(models, dataset, sampled, config.lenses,
                      gradients=lambda: job.registry.load_differentiable(source.ref, source.sidecar),
                      input_range=input_range_of(source.sidecar, dataset)).to_json()
