"""`convrepair check`: sampled comparison of a source and a converted model, then localization.

Like FetaFix, the models are compared on R seeded rounds of N distinct samples, not one batch.
Classifiers are judged by label agreement (and by tolerances on fp32 paths); other outputs by
tolerance. The result is one `CheckReport`, serialisable as `convrepair.check/v1`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.compare import Comparison, clopper_pearson_upper, compare_on, pool
from convrepair.data import Dataset, load_npz, random_inputs, sampling_rounds
from convrepair.errors import BadInput
from convrepair.model import ModelRef, model_ref
from convrepair.plugins import PluginRegistry
from convrepair.sidecar import Sidecar, read_sidecar

if TYPE_CHECKING:
    from convrepair.lenses import LensConfig

SCHEMA = "convrepair.check/v1"


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    enforced: bool  # False: label agreement decides (reduced precision classifiers)
    origin: str

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "enforced": self.enforced, "origin": self.origin}


# Defaults by the target's precision (from its sidecar): fp32 paths tight; reduced precision
# looser, and for classifiers the labels decide.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1)}


def default_tolerance(precision: str, atol: float | None, rtol: float | None) -> Tolerance:
    base_atol, base_rtol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    if atol is not None or rtol is not None:
        return Tolerance(atol if atol is not None else base_atol, rtol if rtol is not None else 0.0, True, "given")
    return Tolerance(base_atol, base_rtol, precision == "fp32", f"default for {precision}")


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

    @property
    def discrepant(self) -> bool:
        return self.verdict == "discrepant"

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
            "disagreement_upper_bound": clopper_pearson_upper(len(pooled.flips), pooled.n)
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


def run_check(
    registry: PluginRegistry,
    source_path: Path,
    target_path: Path,
    config: CheckConfig,
    on_round: Callable[[int, int], None] | None = None,
) -> CheckReport:
    started = time.perf_counter()
    if config.rounds < 1 or config.samples < 1 or config.top_k < 1:
        raise BadInput("--rounds, --samples and --top-k must be at least 1")
    source_ref = model_ref(source_path, registry)
    target_ref = model_ref(target_path, registry)
    source_sidecar, target_sidecar = read_sidecar(source_ref.path), read_sidecar(target_ref.path)
    tolerance = default_tolerance(target_sidecar.precision if target_sidecar else "fp32", config.atol, config.rtol)
    with registry.load(source_ref, source_sidecar) as source, registry.load(target_ref, target_sidecar) as target:
        if len(source.inputs) != len(target.inputs):
            raise BadInput(
                f"input counts differ: source has {len(source.inputs)}, target has {len(target.inputs)}", target_ref.path
            )
        dataset = load_dataset(config, source.inputs, source_sidecar)
        if config.subset is not None:
            dataset = dataset.take(np.asarray(config.subset))
        plan = sampling_rounds(len(dataset), config.rounds, config.samples, config.seed)
        parts: list[Comparison] = []
        rounds: list[RoundResult] = []
        for index, (seed, indices) in enumerate(plan):
            comparison = compare_on(
                source, target, dataset, indices, config.top_k, config.batch_size, tolerance.atol, tolerance.rtol
            )
            parts.append(comparison)
            rounds.append(RoundResult.of(seed, comparison))
            if on_round:
                on_round(index + 1, len(plan))
        pooled = pool(parts)
        reasons = _reasons(pooled, tolerance)
        verdict = "discrepant" if reasons else "equivalent"
        report = CheckReport(
            source=source_ref,
            target=target_ref,
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
        )
        if config.localize or (config.localize is None and report.discrepant):
            from convrepair.localize import localize

            result = localize(registry, source_ref, target_ref, source_sidecar, target_sidecar, dataset, pooled.flips, report.discrepant, config.seed)
            report.localization = result.to_json()
        if config.lenses:
            report.lenses = _lenses(registry, source, target, source_ref, target_ref, source_sidecar, dataset, plan, config)
    report.seconds = time.perf_counter() - started
    return report


def _lenses(registry, source, target, source_ref, target_ref, source_sidecar, dataset, plan, config) -> dict[str, Any]:
    """The reliability lenses on the very samples the rounds drew, with the runners already open."""
    from convrepair.lenses import LensModel, input_range_of, run_lenses

    sampled = np.unique(np.concatenate([indices for _, indices in plan]))
    models = [LensModel("source", source, str(source_ref.path), source_ref.format),
              LensModel("target", target, str(target_ref.path), target_ref.format)]
    return run_lenses(models, dataset, sampled, config.lenses,
                      gradients=lambda: registry.load_differentiable(source_ref, source_sidecar),
                      input_range=input_range_of(source_sidecar, dataset)).to_json()


def _reasons(pooled: Comparison, tolerance: Tolerance) -> list[str]:
    reasons = []
    if pooled.label_agreement is not None and pooled.flips:
        reasons.append(f"{len(pooled.flips)} sample(s) change their top-1 label")
    if tolerance.enforced or pooled.label_agreement is None:
        for out in pooled.outputs:
            if out.violations:
                reasons.append(
                    f"output {out.index} ({out.source_name}): {out.violations} of {out.elements} values outside "
                    f"atol={tolerance.atol:g} + rtol={tolerance.rtol:g}·|source| (max |Δ| {out.max_abs:.3g})"
                )
    return reasons
