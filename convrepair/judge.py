"""The one judge: what each output is, what it may differ by, and the verdict. Pure numpy.

`check`, `convert --data`, `repair` and the daemon all decide here; the judge knows no job, runner
or converter, so the parent process can judge tensors a contained worker handed back.

- Classifier or not is decided from the output's shape and meaning (probabilities, its name, the
  sidecar's labels), never by "two dimensions" alone: an embedding has no top-1 label.
- fp32 is judged against the source's own float noise: the source is run again on its inputs
  nudged by one part in a million (`PERTURBATION`) — on `FLOOR_SAMPLES` samples spread evenly
  over every round (all of them when fewer) — and a conversion may add up to `NOISE_FACTOR` times
  the 99th percentile of the relative error per sample this causes, and lose at most
  `SQNR_MARGIN_DB` of its SQNR (never held tighter than `MIN_LIMIT`). `--atol/--rtol` still
  enforce a user's numbers.
- Evidence outranks the guard: a difference found makes the check `discrepant`, and the guard's
  reasons (a source that ignores the data, data outside the declared range) stand beside it. The
  guard only refuses to call an undisturbed comparison `equivalent`: `inconclusive`.
- Batch invariance: a few samples of the target run one at a time; outputs that move with the
  batch they ran in (dynamic quantization, batch statistics) are reported `batch_dependent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from convrepair.sidecar import recorded_range

if TYPE_CHECKING:
    from convrepair.compare import Comparison
    from convrepair.data import Dataset
    from convrepair.sidecar import Sidecar

# Elementwise defaults by the target's precision (from its sidecar): reported for fp32, enforced
# for reduced-precision outputs that are not class scores.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1)}
PERTURBATION = 1e-6  # relative nudge of the inputs that measures the source's float sensitivity
NOISE_FACTOR = 10.0  # a conversion may add this many times the source's own float noise per sample
NOISE_QUANTILE = 0.99  # the source's noise per output: this quantile over the samples' relative errors
SQNR_MARGIN_DB = 20.0  # … and lose at most this much SQNR against it
MIN_FLOOR = 1e-7  # relative noise no fp32 computation is below (about one ulp)
MIN_LIMIT = 1e-5  # a conversion within this relative error per sample (≈ 100 dB SQNR) is always fp32-equivalent
FLOOR_SAMPLES = 128  # the floor is measured on this many samples spread evenly over every round (all, when fewer):
# every sample (500 by default) would cost a check 1.4× its CPU time for the same p99 (docs/CHECK.md)
FLOOR_SAMPLES_SINGLE = 64  # integer inputs cannot be nudged: this many samples run one at a time instead
BATCH_SAMPLES = 16  # samples of the target run one at a time against their batched outputs
BATCH_LIMIT = 1e-4  # relative change per sample beyond which outputs depend on the batch they ran in
VARIATION_FLOOR = 1e-4  # source outputs varying less than this (std over RMS) do not depend on the data
DOMINANT_CLASS = 0.99  # one class for this share of the samples: the data cannot tell models apart
RANGE_SLACK = 0.01  # share of the declared input range the data may exceed it by
NEIGHBOURS_MIN = 0.95  # nearest-neighbour agreement an embedding must keep in reduced precision
_EMBEDDING_WORDS = ("embed", "hidden", "feature", "pool", "vector", "encod", "regress", "token")
_CLASS_WORDS = ("logit", "prob", "class", "softmax", "score", "pred", "label")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    enforced: bool  # elementwise tolerances decide (given by the user, or reduced-precision non-classifiers)
    origin: str
    noise_floor: dict[str, Any] | None = None  # fp32 by default: limits from the source's own float noise
    per_output: dict[str, tuple[float, float]] | None = None  # --atol NAME:A / --rtol NAME:R, by source output name

    def for_output(self, name: str) -> tuple[float, float]:
        """(atol, rtol) that output `name` is held to."""
        return (self.per_output or {}).get(name, (self.atol, self.rtol))

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "enforced": self.enforced, "origin": self.origin,
                "noise_floor": self.noise_floor,
                "per_output": {name: {"atol": a, "rtol": r} for name, (a, r) in (self.per_output or {}).items()} or None}


@dataclass(frozen=True)
class DataFacts:
    """What the judge needs to know of the data: its size, labels, origin and the range of each
    float input (the guard's range check). Built from a loaded `Dataset`, or by the parent from
    the data file itself."""

    n: int
    labels: np.ndarray | None
    origin: str
    given: bool  # the user's data (the range guard applies), not drawn inputs
    ranges: tuple[tuple[float, float] | None, ...] = ()

    @classmethod
    def of(cls, dataset: Dataset, given: bool) -> DataFacts:
        return cls(len(dataset), dataset.labels, dataset.origin, given, tuple(value_range(x) for x in dataset.inputs))


def value_range(x: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a float array's finite values; None for integer or empty arrays."""
    if not np.issubdtype(x.dtype, np.floating) or not x.size:
        return None
    finite = x[np.isfinite(x)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def overall_range(ranges) -> tuple[float, float] | None:
    """(min, max) over several inputs' value ranges (None entries skipped); None when none has one."""
    spans = [span for span in ranges if span is not None]
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


def default_tolerance(precision: str, atol: float | None, rtol: float | None) -> Tolerance:
    base_atol, base_rtol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    if atol is not None or rtol is not None:
        return Tolerance(atol if atol is not None else base_atol, rtol if rtol is not None else 0.0, True, "given")
    return Tolerance(base_atol, base_rtol, precision == "fp32", f"default for {precision}")


def needs_floor(config, precision: str) -> bool:
    """Is the source's float noise the measure (fp32 and no numbers of the user's)?"""
    return precision == "fp32" and config.atol is None and config.rtol is None and not (config.output_atol or config.output_rtol)


def classifier_of(output: np.ndarray, name: str, sidecar: Sidecar | None) -> bool:
    """Are these class scores? Probabilities, a class-like name or the sidecar's labels say so; an
    embedding-like name, a hidden-size width (a multiple of 64 from 128) or no second axis say not."""
    from convrepair.lenses.scores import looks_like_probabilities

    if output.ndim != 2 or output.shape[1] < 2:
        return False
    width = output.shape[1]
    if sidecar is not None and sidecar.labels:
        return len(sidecar.labels) == width
    lowered = name.lower()
    if any(word in lowered for word in _EMBEDDING_WORDS):
        return False
    if any(word in lowered for word in _CLASS_WORDS) or looks_like_probabilities(output):
        return True
    return not (width >= 128 and width % 64 == 0)


def tolerance_for(config, names: list[str], precision: str, classifier: bool, floor: dict[str, Any] | None) -> Tolerance:
    """The user's numbers when given; fp32: the source's noise floor; else the precision's defaults."""
    base = default_tolerance(precision, config.atol, config.rtol)
    if config.output_atol or config.output_rtol:
        return _per_output(base, names, config.output_atol, config.output_rtol)
    if base.origin == "given":
        return base
    if precision == "fp32":
        if floor is None:
            raise ValueError("an fp32 check without the source's noise floor")
        return Tolerance(base.atol, base.rtol, False, "the source's own float noise", floor)
    return Tolerance(base.atol, base.rtol, not classifier, base.origin)


def _per_output(base: Tolerance, names: list[str], atols: dict[str, float], rtols: dict[str, float]) -> Tolerance:
    """The user's numbers per output name (Polygraphy's `--atol out0:1e-3`); unnamed outputs keep `base`."""
    from convrepair.errors import BadInput

    unknown = sorted((set(atols) | set(rtols)) - set(names))
    if unknown:
        raise BadInput(f"--atol/--rtol name output(s) {unknown} the source does not have; its outputs are {names}")
    per_output = {name: (atols.get(name, base.atol), rtols.get(name, base.rtol)) for name in set(atols) | set(rtols)}
    return Tolerance(base.atol, base.rtol, True, "given per output", per_output=per_output)


def spread(count: int, most: int) -> np.ndarray:
    """Positions of at most `most` of `count` samples, evenly spread over all of them (every round)."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, most).round().astype(np.int64))


def noise_floor(reference: list[np.ndarray], moved: list[np.ndarray], method: str, of: int | None = None) -> dict[str, Any]:
    """Per output: how far the source's own outputs moved (`moved`: on nudged inputs, or one sample
    at a time), as the `NOISE_QUANTILE` of the relative error per sample and as SQNR; and the limits
    a conversion is held to."""
    outputs = []
    for s, m in zip(reference, moved):
        s64, m64 = s.astype(np.float64).reshape(len(s), -1), m.astype(np.float64).reshape(len(m), -1)
        rel = np.linalg.norm(s64 - m64, axis=1) / np.maximum(np.linalg.norm(s64, axis=1), 1e-30)
        floor = max(float(np.quantile(rel, NOISE_QUANTILE)) if rel.size else 0.0, MIN_FLOOR)
        noise = float(((s64 - m64) ** 2).sum())
        sqnr = 10 * np.log10(max(float((s64**2).sum()), 1e-30) / noise) if noise > 0 else -20 * np.log10(MIN_FLOOR)
        sqnr = min(sqnr, -20 * np.log10(MIN_FLOOR))
        outputs.append({"rel_p99": floor, "limit": max(NOISE_FACTOR * floor, MIN_LIMIT), "sqnr_db": round(float(sqnr), 2),
                        "sqnr_min_db": round(float(min(sqnr - SQNR_MARGIN_DB, -20 * np.log10(MIN_LIMIT))), 2)})
    samples = int(len(reference[0])) if reference else 0
    return {"method": method, "samples": samples, "of": of if of is not None else samples, "quantile": NOISE_QUANTILE,
            "factor": NOISE_FACTOR, "outputs": outputs}


def batch_dependence(batched: list[np.ndarray], single: list[np.ndarray] | None, classifier: bool,
                     why_not: str | None = None) -> dict[str, Any]:
    """Did the target's outputs on a few samples change when they ran alone instead of in a batch?"""
    if single is None or not batched or not len(batched[0]):
        return {"detected": None, "samples": 0, "max_rel_change": None, "label_changes": None,
                "limit": BATCH_LIMIT, "reason": why_not or "not measured"}
    change = 0.0
    for b, s in zip(batched, single):
        b64, s64 = b.astype(np.float64).reshape(len(b), -1), s.astype(np.float64).reshape(len(s), -1)
        rel = np.linalg.norm(b64 - s64, axis=1) / np.maximum(np.linalg.norm(b64, axis=1), 1e-30)
        change = max(change, float(rel.max(initial=0.0)))
    labels = None
    if classifier and batched[0].ndim == 2 and batched[0].shape[1] > 1:
        labels = int((batched[0].argmax(axis=1) != single[0].argmax(axis=1)).sum())
    return {"detected": bool(change > BATCH_LIMIT or bool(labels)), "samples": int(len(batched[0])),
            "max_rel_change": change, "label_changes": labels, "limit": BATCH_LIMIT, "reason": None}


def judge(pooled: Comparison, tolerance: Tolerance) -> list[str]:
    """Why the target is discrepant ([] when it is not). Sets each output's `violations` in the
    unit that was judged (samples over the noise-floor limit, or values outside tolerances)."""
    reasons = []
    if pooled.label_agreement is not None and pooled.flips:
        reasons.append(f"{len(pooled.flips)} sample(s) change their top-1 label")
    if tolerance.noise_floor is not None:
        for out, floor in zip(pooled.outputs, tolerance.noise_floor["outputs"]):
            errors = out.rel_errors if out.rel_errors is not None else np.zeros(0)
            out.violations, out.elements, out.unit = int((errors > floor["limit"]).sum()), int(errors.size), "samples"
            if out.violations:
                reasons.append(
                    f"output {out.index} ({out.source_name}): {out.violations} of {out.elements} samples differ by more than "
                    f"{NOISE_FACTOR:g}× the source's own float noise (relative error up to {out.rel_error_max:.3g}, "
                    f"limit {floor['limit']:.3g})")
            if np.isfinite(out.sqnr_db) and out.sqnr_db < floor["sqnr_min_db"]:
                reasons.append(
                    f"output {out.index} ({out.source_name}): SQNR {out.sqnr_db:.1f} dB is more than {SQNR_MARGIN_DB:g} dB "
                    f"below the source's own float noise ({floor['sqnr_db']:.1f} dB)")
        return reasons
    if tolerance.enforced or pooled.label_agreement is None:
        for out in pooled.outputs:
            if out.violations:
                atol, rtol = tolerance.for_output(out.source_name)
                reasons.append(
                    f"output {out.index} ({out.source_name}): {out.violations} of {out.elements} values outside "
                    f"atol={atol:g} + rtol={rtol:g}·|source| (max |Δ| {out.max_abs:.3g})"
                )
    if pooled.label_agreement is None and tolerance.origin != "given":
        for out in pooled.outputs:
            agreement = out.neighbour_agreement
            if agreement is not None and agreement < NEIGHBOURS_MIN:
                reasons.append(f"output {out.index} ({out.source_name}): nearest neighbours agree for {agreement:.1%} "
                               f"of the samples (below {NEIGHBOURS_MIN:.0%})")
    return reasons


def guard(pooled: Comparison, data: DataFacts, sidecar: Sidecar | None) -> list[str]:
    """Reasons the comparison cannot show equivalence ([] when it can)."""
    reasons = []
    variations = [out.variation for out in pooled.outputs]
    if pooled.n >= 2 and variations and all(v is not None and v < VARIATION_FLOOR for v in variations):
        reasons.append(f"the source's outputs do not depend on the data (across {pooled.n} samples they vary by "
                       f"{max(variations):.2g} of their size)")
    if pooled.label_agreement is not None and pooled.n >= 20 and pooled.source_classes and not reasons:
        label, count = max(pooled.source_classes.items(), key=lambda item: item[1])
        share = count / pooled.n
        truth = data.labels
        truly_one_class = truth is not None and truth.size and np.unique(truth.reshape(len(truth), -1)[:, 0], return_counts=True)[1].max() >= DOMINANT_CLASS * len(truth)
        if share >= DOMINANT_CLASS and not truly_one_class:
            reasons.append(f"the source's outputs do not depend on the data: it gives class {label} to {share:.1%} "
                           f"of {pooled.n} samples")
    recorded = recorded_range(sidecar)
    if data.given and recorded is not None:  # no recorded range: no range guard (see guard_notes)
        low, high = recorded
        slack = RANGE_SLACK * max(high - low, 1e-12)
        for span in data.ranges:
            if span is not None and (span[0] < low - slack or span[1] > high + slack):
                reasons.append(f"the data lies outside the input range the source's sidecar records ([{low:g}, {high:g}]); "
                               f"it spans [{span[0]:.4g}, {span[1]:.4g}]")
                break
    return reasons


def guard_notes(data: DataFacts, sidecar: Sidecar | None) -> list[str]:
    """What the guard could not check, said beside its reasons (never a reason itself)."""
    if data.given and recorded_range(sidecar) is None:
        span = overall_range(data.ranges)
        seen = f" (the data spans [{span[0]:.4g}, {span[1]:.4g}])" if span else ""
        return [f"no recorded input range: the source's sidecar records none measured at conversion, so the data's "
                f"range was not checked against one{seen}"]
    return []


def verdict(reasons: list[str], unsure: list[str]) -> str:
    """Evidence first: differences found are `discrepant` whatever the guard says; without any, a
    guard's reason makes the check `inconclusive`."""
    return "discrepant" if reasons else ("inconclusive" if unsure else "equivalent")
