"""Calibration lens: expected calibration error, reliability diagram, temperature scaling.

ECE = Σ_m |B_m|/N · |acc(B_m) − conf(B_m)| over M equal-width confidence bins (Guo et al. 2017),
each bin's confidence being its mean. Temperature scaling fits one T > 0 that minimises the NLL of
softmax(z/T) on data the ECE-after is not measured on. NLL is convex in 1/T, so a golden-section
search over 1/T finds the global minimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convrepair.lenses.scores import LensUnavailable, log_softmax


@dataclass
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    accuracy: float | None
    confidence: float | None


@dataclass
class Calibration:
    n: int
    ece: float
    mce: float  # the worst bin's gap
    accuracy: float
    nll: float
    temperature: float
    ece_before: float  # without T, on the rows ECE-after is measured on (all, or the half T was not fitted on)
    ece_after: float  # with T, on those rows
    nll_after: float
    n_fit: int
    bins: list[ReliabilityBin] = field(default_factory=list)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, float, list[ReliabilityBin]]:
    """(ECE, MCE, bins) with bins (k/M, (k+1)/M]; a confidence of exactly 0 falls in the first."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows, ece, mce, n = [], 0.0, 0.0, len(confidence)
    for k in range(bins):
        member = index == k
        count = int(member.sum())
        if count:
            acc, conf = float(correct[member].mean()), float(confidence[member].mean())
            gap = abs(acc - conf)
            ece += count / n * gap
            mce = max(mce, gap)
            rows.append(ReliabilityBin(k / bins, (k + 1) / bins, count, acc, conf))
        else:
            rows.append(ReliabilityBin(k / bins, (k + 1) / bins, 0, None, None))
    return ece, mce, rows


def nll(log_p: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(scores: np.ndarray, labels: np.ndarray, low: float = 0.02, high: float = 50.0) -> float:
    """T minimising NLL(softmax(scores / T)); scores are logits or log-probabilities."""
    ratio = (np.sqrt(5) - 1) / 2

    def loss(beta: float) -> float:
        return nll(log_softmax(scores, 1.0 / beta), labels)

    a, b = 1.0 / high, 1.0 / low  # search over beta = 1/T
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(2.0 / (a + b))


def calibrate(scores: np.ndarray, labels: np.ndarray, fit_scores: np.ndarray, fit_labels: np.ndarray,
              bins: int = 15, after: np.ndarray | None = None) -> Calibration:
    """The calibration of one model (scores: logits or log-probabilities). ECE-after is measured on
    the rows `after` of `scores` (default all), which must not be the ones T was fitted on."""
    log_p = log_softmax(scores)
    confidence, predicted = np.exp(log_p.max(axis=1)), log_p.argmax(axis=1)
    ece, mce, rows = reliability(confidence, predicted == labels, bins)
    temperature = fit_temperature(fit_scores, fit_labels)
    after = np.arange(len(labels)) if after is None else after
    ece_before, _, _ = reliability(confidence[after], predicted[after] == labels[after], bins)
    scaled = log_softmax(scores[after], temperature)
    ece_after, _, _ = reliability(np.exp(scaled.max(axis=1)), scaled.argmax(axis=1) == labels[after], bins)
    return Calibration(len(labels), ece, mce, float((predicted == labels).mean()), nll(log_p, labels),
                       temperature, ece_before, ece_after, nll(scaled, labels[after]), len(fit_labels), rows)


def run(ctx) -> dict[str, Calibration]:
    if ctx.labels is None:
        raise LensUnavailable("needs labels: the data has no 'y'")
    for labels in (ctx.labels, ctx.fit_labels):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= ctx.classes):
            raise LensUnavailable(f"labels run outside the model's {ctx.classes} classes")
    if ctx.fit_scores is not None:
        return {role: calibrate(ctx.eval_scores[role], ctx.labels, ctx.fit_scores[role], ctx.fit_labels, ctx.config.bins)
                for role in ctx.roles}
    # no repair split: fit T on a seeded half of the samples, measure ECE after it on the other half
    order = np.random.default_rng(ctx.config.seed).permutation(len(ctx.labels))
    fit, after = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    return {role: calibrate(ctx.eval_scores[role], ctx.labels, ctx.eval_scores[role][fit], ctx.labels[fit],
                            ctx.config.bins, after) for role in ctx.roles}
