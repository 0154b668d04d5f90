"""Output comparison of two models on the same samples: metrics, label agreement, statistics.

Knows no framework: it sees runners and numpy arrays. Outputs are matched by position (names
differ across frameworks). Batches are streamed into an accumulator, so memory stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from convrepair.data import Dataset, batches, feeds_for
from convrepair.errors import BadInput
from convrepair.model import Runner

_EPS = 1e-12


@dataclass
class OutputStats:
    index: int
    source_name: str
    target_name: str
    max_abs: float
    max_rel: float
    cosine_min: float
    sqnr_db: float
    violations: int = 0  # elements outside atol + rtol * |source| (or samples over the noise-floor limit)
    elements: int = 0
    signal_energy: float = 0.0
    noise_energy: float = 0.0
    rel_errors: np.ndarray | None = None  # per sample ||s − t|| / ||s||, in the order samples were added
    sample_ids: np.ndarray | None = None
    moments: tuple[np.ndarray, np.ndarray, int] | None = None  # source Σx, Σx², n per element (variation)
    neighbours: tuple[int, int] = (0, 0)  # nearest-neighbour agreements, comparisons (non-classifiers)
    unit: str = "values"  # what `violations` counts: "values" (tolerances) or "samples" (noise floor)

    @property
    def rel_error_max(self) -> float:
        return float(self.rel_errors.max(initial=0.0)) if self.rel_errors is not None else 0.0

    @property
    def variation(self) -> float | None:
        """How much the source's output varies across samples: RMS std over RMS value."""
        if self.moments is None or self.moments[2] < 2:
            return None
        total, squares, n = self.moments
        mean = total / n
        var = np.maximum(squares / n - mean**2, 0.0)
        return float(np.sqrt(var.mean()) / max(np.sqrt((squares / n).mean()), 1e-30))

    @property
    def neighbour_agreement(self) -> float | None:
        agree, compared = self.neighbours
        return agree / compared if compared else None

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "source_name": self.source_name,
            "target_name": self.target_name,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine_min": self.cosine_min,
            "sqnr_db": self.sqnr_db if np.isfinite(self.sqnr_db) else None,
            "violations": self.violations,
            "elements": self.elements,
            "violations_unit": self.unit,
            "rel_error_max": self.rel_error_max,
            "rel_error_p99": float(np.quantile(self.rel_errors, 0.99)) if self.rel_errors is not None and self.rel_errors.size else None,
            "source_variation": self.variation,
            "neighbour_agreement": self.neighbour_agreement,
            "rel_error_percentiles": error_percentiles(self.rel_errors),
            # as Polygraphy's "minimum required tolerance": either alone would pass every value
            "min_passing_tolerance": {"atol": self.max_abs, "rtol": self.max_rel},
        }


def error_percentiles(values: np.ndarray | None) -> dict[str, float] | None:
    """Mean, median, p90 and p99 of per-sample relative errors (outputs here, layers in localize)."""
    if values is None or not values.size:
        return None
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p90": float(np.quantile(values, 0.9)), "p99": float(np.quantile(values, 0.99))}


@dataclass
class Comparison:
    """Pooled result of one comparison (one round, or several pooled)."""

    n: int
    label_agreement: float | None
    topk_agreement: float | None
    flips: list[int]
    outputs: list[OutputStats]
    source_correct: int | None = None
    target_correct: int | None = None
    flip_labels: list[tuple[int, int]] = field(default_factory=list)  # (source label, target label)
    source_classes: dict[int, int] = field(default_factory=dict)  # source top-1 label → count
    distinct: int | None = None  # distinct samples behind `n` (rounds may overlap on small data)

    @property
    def max_abs(self) -> float:
        return max(o.max_abs for o in self.outputs)

    @property
    def max_rel(self) -> float:
        return max(o.max_rel for o in self.outputs)

    @property
    def cosine_min(self) -> float:
        return min(o.cosine_min for o in self.outputs)


class Accumulator:
    """Streams batches of paired outputs; `result()` gives the pooled `Comparison`."""

    def __init__(self, source_names: list[str], target_names: list[str], top_k: int = 1, atol: float = np.inf, rtol: float = 0.0,
                 classifier: bool | None = None, per_output: dict[str, tuple[float, float]] | None = None):
        self.source_names, self.target_names, self.top_k = source_names, target_names, top_k
        self.declared_classifier = classifier
        self.atol, self.rtol = atol, rtol
        # each output's (atol, rtol): the per-output numbers where given, else the common ones
        self.limits = [(per_output or {}).get(name, (atol, rtol)) for name in source_names]
        k = len(source_names)
        self.violations = np.zeros(k, dtype=np.int64)
        self.elements = np.zeros(k, dtype=np.int64)
        self.n = 0
        self.max_abs = np.zeros(k)
        self.max_rel = np.zeros(k)
        self.cos_min = np.ones(k)
        self.signal = np.zeros(k)
        self.noise = np.zeros(k)
        self.agree = self.topk = 0
        self.classifier = True
        self.rel_errors: list[list[np.ndarray]] = [[] for _ in range(k)]
        self.ids: list[np.ndarray] = []
        self.sums: list = [None] * k
        self.squares: list = [None] * k
        self.neighbours = [[0, 0] for _ in range(k)]
        self.source_classes: dict[int, int] = {}
        self.flips: list[int] = []
        self.flip_labels: list[tuple[int, int]] = []
        self.source_correct = self.target_correct = 0
        self.has_labels = False

    def add(self, source: list[np.ndarray], target: list[np.ndarray], indices: np.ndarray, labels: np.ndarray | None) -> None:
        for i, (s, t) in enumerate(zip(source, target)):
            s64, t64 = s.astype(np.float64).reshape(len(s), -1), t.astype(np.float64).reshape(len(t), -1)
            if s64.shape != t64.shape:
                raise BadInput(
                    f"output {i} shapes differ: source {tuple(s.shape)} vs target {tuple(t.shape)}"
                )
            diff = np.abs(s64 - t64)
            self.max_abs[i] = max(self.max_abs[i], float(diff.max(initial=0.0)))
            scale = np.maximum(np.abs(s64), 1e-6)
            self.max_rel[i] = max(self.max_rel[i], float((diff / scale).max(initial=0.0)))
            norms = np.linalg.norm(s64, axis=1) * np.linalg.norm(t64, axis=1)
            cos = np.where(norms > _EPS, (s64 * t64).sum(axis=1) / np.maximum(norms, _EPS), 1.0 - diff.max(axis=1))
            self.cos_min[i] = min(self.cos_min[i], float(cos.min(initial=1.0)))
            self.signal[i] += float((s64**2).sum())
            self.noise[i] += float((diff**2).sum())
            atol, rtol = self.limits[i]
            self.violations[i] += int((diff > atol + rtol * np.abs(s64)).sum())
            self.elements[i] += diff.size
            self.rel_errors[i].append(np.linalg.norm(s64 - t64, axis=1) / np.maximum(np.linalg.norm(s64, axis=1), 1e-30))
            self.sums[i] = s64.sum(axis=0) + (0 if self.sums[i] is None else self.sums[i])
            self.squares[i] = (s64**2).sum(axis=0) + (0 if self.squares[i] is None else self.squares[i])
            agree, compared = nearest_neighbour_agreement(s64, t64)
            self.neighbours[i][0] += agree
            self.neighbours[i][1] += compared
        self.ids.append(np.asarray(indices))
        first_s, first_t = source[0], target[0]
        shaped = first_s.ndim == 2 and first_s.shape[1] > 1
        self.classifier = self.classifier and shaped and (self.declared_classifier is not False)
        if self.classifier:
            s_label = first_s.argmax(axis=1)
            t_label = first_t.argmax(axis=1)
            same = s_label == t_label
            for label, count in zip(*np.unique(s_label, return_counts=True)):
                self.source_classes[int(label)] = self.source_classes.get(int(label), 0) + int(count)
            self.agree += int(same.sum())
            k = min(self.top_k, first_t.shape[1])
            t_topk = np.argpartition(-first_t, k - 1, axis=1)[:, :k]
            self.topk += int((t_topk == s_label[:, None]).any(axis=1).sum())
            for j in np.nonzero(~same)[0]:
                self.flips.append(int(indices[j]))
                self.flip_labels.append((int(s_label[j]), int(t_label[j])))
            if labels is not None:
                self.has_labels = True
                self.source_correct += int((s_label == labels).sum())
                self.target_correct += int((t_label == labels).sum())
        self.n += len(first_s)

    def result(self) -> Comparison:
        stats = [
            OutputStats(
                index=i,
                source_name=self.source_names[i],
                target_name=self.target_names[i],
                max_abs=float(self.max_abs[i]),
                max_rel=float(self.max_rel[i]),
                cosine_min=float(self.cos_min[i]),
                sqnr_db=_sqnr(self.signal[i], self.noise[i]),
                violations=int(self.violations[i]),
                elements=int(self.elements[i]),
                signal_energy=float(self.signal[i]),
                noise_energy=float(self.noise[i]),
                rel_errors=np.concatenate(self.rel_errors[i]) if self.rel_errors[i] else np.zeros(0),
                sample_ids=np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64),
                moments=(self.sums[i], self.squares[i], self.n) if self.sums[i] is not None else None,
                neighbours=(self.neighbours[i][0], self.neighbours[i][1]) if not self.classifier else (0, 0),
            )
            for i in range(len(self.source_names))
        ]
        n = max(self.n, 1)
        return Comparison(
            n=self.n,
            label_agreement=self.agree / n if self.classifier else None,
            topk_agreement=self.topk / n if self.classifier else None,
            flips=sorted(self.flips),
            outputs=stats,
            source_correct=self.source_correct if self.has_labels else None,
            target_correct=self.target_correct if self.has_labels else None,
            flip_labels=self.flip_labels,
            source_classes=dict(self.source_classes) if self.classifier else {},
        )


def nearest_neighbour_agreement(source: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """How many samples keep their nearest neighbour (by cosine, among the batch) from source to
    target: the rank agreement that matters for embeddings, where top-1 "labels" mean nothing."""
    n = len(source)
    if n < 3 or source.shape[1] < 2:
        return 0, 0

    def neighbours(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return int((neighbours(source) == neighbours(target)).sum()), n


def _sqnr(signal: float, noise: float) -> float:
    if noise <= _EPS:
        return float("inf")
    return float(10.0 * np.log10(max(signal, _EPS) / noise))


def check_output_counts(source: Runner, target: Runner, source_outputs: dict, target_outputs: dict) -> None:
    if len(source_outputs) != len(target_outputs):
        raise BadInput(
            f"output counts differ: source has {len(source_outputs)} ({list(source_outputs)}), "
            f"target has {len(target_outputs)} ({list(target_outputs)})"
        )


def compare_on(
    source: Runner,
    target: Runner,
    dataset: Dataset,
    indices: np.ndarray,
    top_k: int = 1,
    batch_size: int = 256,
    atol: float = np.inf,
    rtol: float = 0.0,
    classifier: bool | None = None,
) -> Comparison:
    """Run both models on `dataset[indices]` batch by batch and compare their outputs."""
    subset = dataset.take(indices)
    outputs = ((indices[start:stop], source.run(feeds_for(source.inputs, subset, start, stop)),
                target.run(feeds_for(target.inputs, subset, start, stop)),
                subset.labels[start:stop] if subset.labels is not None else None)
               for start, stop in batches(len(subset), batch_size))
    return compare_outputs(source, target, outputs, top_k, atol, rtol, classifier)


def compare_outputs(source: Runner, target: Runner, outputs, top_k: int = 1, atol: float = np.inf, rtol: float = 0.0,
                    classifier: bool | None = None) -> Comparison:
    """Compare outputs computed elsewhere: `outputs` yields (indices, source outputs, target
    outputs, labels or None) a batch at a time."""
    acc = None
    for indices, s_out, t_out, labels in outputs:
        check_output_counts(source, target, s_out, t_out)
        if acc is None:
            acc = Accumulator(list(s_out), list(t_out), top_k, atol, rtol, classifier)
        acc.add(list(s_out.values()), list(t_out.values()), indices, labels)
    assert acc is not None
    return acc.result()


def pool(parts: list[Comparison]) -> Comparison:
    """Pool per-round comparisons: sums of counts, extremes of errors, energy-weighted SQNR."""
    n = sum(p.n for p in parts)
    classifier = all(p.label_agreement is not None for p in parts)
    outputs = []
    for i, first in enumerate(parts[0].outputs):
        column = [p.outputs[i] for p in parts]
        signal = sum(o.signal_energy for o in column)
        noise = sum(o.noise_energy for o in column)
        outputs.append(
            OutputStats(
                index=i,
                source_name=first.source_name,
                target_name=first.target_name,
                max_abs=max(o.max_abs for o in column),
                max_rel=max(o.max_rel for o in column),
                cosine_min=min(o.cosine_min for o in column),
                sqnr_db=_sqnr(signal, noise),
                violations=sum(o.violations for o in column),
                elements=sum(o.elements for o in column),
                signal_energy=signal,
                noise_energy=noise,
                rel_errors=np.concatenate([o.rel_errors for o in column if o.rel_errors is not None] or [np.zeros(0)]),
                sample_ids=np.concatenate([o.sample_ids for o in column if o.sample_ids is not None] or [np.zeros(0, np.int64)]),
                moments=_pooled_moments([o.moments for o in column]),
                neighbours=(sum(o.neighbours[0] for o in column), sum(o.neighbours[1] for o in column)),
                unit=first.unit,
            )
        )

    def weighted(attr: str) -> float | None:
        return sum(getattr(p, attr) * p.n for p in parts) / max(n, 1) if classifier else None

    labelled = all(p.source_correct is not None for p in parts)
    return Comparison(
        n=n,
        label_agreement=weighted("label_agreement"),
        topk_agreement=weighted("topk_agreement"),
        flips=sorted({i for p in parts for i in p.flips}),
        outputs=outputs,
        source_correct=sum(p.source_correct for p in parts) if labelled else None,
        target_correct=sum(p.target_correct for p in parts) if labelled else None,
        flip_labels=[pair for p in parts for pair in p.flip_labels],
        source_classes=_pooled_counts([p.source_classes for p in parts]),
        distinct=len({int(i) for p in parts for o in p.outputs[:1] if o.sample_ids is not None for i in o.sample_ids}) or None,
    )


def _pooled_moments(moments):
    if any(m is None for m in moments):
        return None
    return (sum(m[0] for m in moments), sum(m[1] for m in moments), sum(m[2] for m in moments))


def _pooled_counts(counts: list[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in counts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out


def clopper_pearson(failures: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) two-sided interval on a failure rate, as
    `scipy.stats.binomtest(failures, n).proportion_ci(method="exact")` gives it."""
    if n <= 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    high = clopper_pearson_upper(failures, n, 1.0 - tail)
    low = 0.0 if failures <= 0 else 1.0 - clopper_pearson_upper(n - failures, n, 1.0 - tail)
    return low, high


def clopper_pearson_upper(failures: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a failure rate after `failures` in `n` trials.

    The p at which P(X ≤ failures | n, p) = 1 − confidence, by bisection on the binomial CDF
    (pure Python: importing scipy.stats would cost a check more than its comparison).
    """
    if n <= 0 or failures >= n:
        return 1.0
    alpha = 1.0 - confidence
    if failures == 0:
        return 1.0 - alpha ** (1.0 / n)
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if _binomial_cdf(failures, n, mid) > alpha:
            low = mid
        else:
            high = mid
    return high


def _binomial_cdf(k: int, n: int, p: float) -> float:
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    return min(1.0, sum(
        math.exp(base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q) for i in range(k + 1)
    ))
