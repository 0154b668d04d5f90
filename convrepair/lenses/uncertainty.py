"""Uncertainty lens: confidence and entropy per model, their shift, and what a set of models says.

Per model: the distribution of the maximum softmax probability and of the predictive entropy
H = −Σ p_k log p_k. Shift against the source: the two-sample Kolmogorov–Smirnov test. Over the set
of models (source, target, repaired — or several registry versions): the variation ratio of their
labels and the split of the total entropy H(p̄) into aleatoric E[H(p_m)] and epistemic (mutual
information) parts. Samples whose max softmax crosses the out-of-distribution threshold τ between
the source and another model are flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convrepair.lenses.scores import entropy, histogram


@dataclass
class Distribution:
    mean_confidence: float
    mean_entropy: float
    below_tau: int  # samples whose max softmax is under τ (would be flagged out-of-distribution)
    confidence_histogram: dict
    entropy_histogram: dict


@dataclass
class Shift:
    """Against the source: KS statistic D and p-value, for confidence and for entropy."""

    confidence_d: float
    confidence_p: float
    entropy_d: float
    entropy_p: float
    crossed_tau: list[int]  # dataset indices whose max softmax is on the other side of τ than the source's


@dataclass
class Ensemble:
    models: list[str]
    variation_ratio_mean: float
    disagreeing_samples: int
    total_entropy: float
    aleatoric: float
    epistemic: float  # mutual information between the label and the model


@dataclass
class Uncertainty:
    tau: float
    models: dict[str, Distribution]
    shift: dict[str, Shift]
    ensemble: Ensemble | None


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov D and its asymptotic p-value (Stephens' small-sample correction)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b))))
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    return d, kolmogorov_q(lam)


def kolmogorov_q(lam: float) -> float:
    """P(K > λ) for the Kolmogorov distribution: 2 Σ (−1)^{k−1} exp(−2k²λ²)."""
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(max(2 * total, 0.0), 1.0))


def ensemble_split(log_probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: (variation ratio, total entropy, aleatoric, epistemic) over a set of models."""
    probs = np.stack([np.exp(lp) for lp in log_probs])  # (models, samples, classes)
    mean = probs.mean(axis=0)
    total = -(mean * np.log(np.clip(mean, 1e-12, None))).sum(axis=1)
    aleatoric = np.mean([entropy(lp) for lp in log_probs], axis=0)
    labels = probs.argmax(axis=2)
    modal = np.array([np.bincount(column).max() for column in labels.T])
    return 1.0 - modal / len(log_probs), total, aleatoric, np.clip(total - aleatoric, 0.0, None)


def run(ctx) -> Uncertainty:
    tau, classes = ctx.config.tau, ctx.classes
    models, shift = {}, {}
    confidence = {role: np.exp(ctx.eval_scores[role].max(axis=1)) for role in ctx.roles}
    entropies = {role: entropy(ctx.eval_scores[role]) for role in ctx.roles}
    for role in ctx.roles:
        models[role] = Distribution(float(confidence[role].mean()), float(entropies[role].mean()),
                                    int((confidence[role] < tau).sum()), histogram(confidence[role], 0.0, 1.0),
                                    histogram(entropies[role], 0.0, math.log(classes)))
    reference = ctx.roles[0]
    for role in ctx.roles[1:]:
        cd, cp = ks_two_sample(confidence[reference], confidence[role])
        ed, ep = ks_two_sample(entropies[reference], entropies[role])
        crossed = (confidence[reference] >= tau) != (confidence[role] >= tau)
        shift[role] = Shift(cd, cp, ed, ep, [int(i) for i in ctx.eval_idx[crossed]])
    ensemble = None
    if len(ctx.roles) > 1:
        ratio, total, aleatoric, epistemic = ensemble_split([ctx.eval_scores[role] for role in ctx.roles])
        ensemble = Ensemble(list(ctx.roles), float(ratio.mean()), int((ratio > 0).sum()), float(total.mean()),
                            float(aleatoric.mean()), float(epistemic.mean()))
    return Uncertainty(tau, models, shift, ensemble)
