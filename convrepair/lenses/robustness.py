"""Robustness lens: FGSM and PGD (L∞) crafted with the source model's gradients, transferred.

The adversarial inputs are crafted on the source in its own framework (or on the torch module
onnx2torch builds from an ONNX source) and then fed to every model: the source's rate is the
white-box attack success, the others' are transfer success rates of the very same inputs. Inputs
stay inside the ε-ball and the valid input range. A repair that makes the model clearly more
vulnerable than the converted model it replaces is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from convrepair.data import Dataset, batches, to_layout
from convrepair.lenses.scores import LensUnavailable, predict_scores

GradientFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class AttackPoint:
    attack: str
    epsilon: float
    success: dict[str, float]  # of each model's correctly classified clean samples, the share the attack flips
    accuracy: dict[str, float]  # under attack, against the reference labels


@dataclass
class Robustness:
    crafted_on: str
    gradients_via: str
    reference: str  # "labels" or "source predictions"
    n: int
    input_range: tuple[float, float]
    pgd_steps: int
    pgd_step: str
    clean_accuracy: dict[str, float]
    points: list[AttackPoint] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def fgsm(gradient: GradientFn, x: np.ndarray, y: np.ndarray, epsilon: float, low: float, high: float) -> np.ndarray:
    """x + ε·sign(∇ₓ loss), clipped to the valid range."""
    return np.clip(x + epsilon * np.sign(gradient(x, y)), low, high).astype(x.dtype)


def pgd(gradient: GradientFn, x: np.ndarray, y: np.ndarray, epsilon: float, step: float, steps: int, low: float,
        high: float, rng: np.random.Generator) -> np.ndarray:
    """Madry et al.: a random start in the ε-ball, then `steps` signed-gradient steps, each projected
    back onto the ε-ball around x and the valid range."""
    adv = np.clip(x + rng.uniform(-epsilon, epsilon, size=x.shape), low, high)
    for _ in range(steps):
        adv = adv + step * np.sign(gradient(adv.astype(x.dtype), y))
        adv = np.clip(np.clip(adv, x - epsilon, x + epsilon), low, high)
    return adv.astype(x.dtype)


def batched(gradient: GradientFn, batch_size: int = 256) -> GradientFn:
    def run(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.concatenate([gradient(x[a:b], y[a:b]) for a, b in batches(len(x), batch_size)])

    return run


def _labels(runners, role: str, layouts: list[str], x: np.ndarray) -> np.ndarray:
    return predict_scores(runners[role], Dataset([x], None, layouts, "adversarial")).argmax(axis=1)


def run(ctx) -> Robustness:
    if ctx.gradients is None:
        raise LensUnavailable("no gradients: the source model was not loaded for them")
    config = ctx.config
    low, high = ctx.input_range
    if not high > low:
        raise LensUnavailable(f"the valid input range [{low}, {high}] is empty")
    count = min(config.robustness_samples, len(ctx.eval_idx))
    rows = np.sort(np.random.default_rng(config.seed).choice(len(ctx.eval_idx), count, replace=False))
    idx = ctx.eval_idx[rows]
    x = ctx.dataset.inputs[0][idx]
    have = ctx.dataset.layouts[0]
    with ctx.gradients() as model:
        want = model.inputs[0].layout if model.inputs[0].layout in ("NCHW", "NHWC") else have

        def gradient(batch: np.ndarray, labels: np.ndarray) -> np.ndarray:
            grad, _ = model.loss_gradient(to_layout(batch, have, want), labels)
            return to_layout(grad, want, have)

        source_labels = ctx.eval_scores[ctx.roles[0]][rows].argmax(axis=1)
        if ctx.labels is not None:
            reference, reference_name = ctx.labels[rows].astype(np.int64), "labels"
        else:
            reference, reference_name = source_labels, "source predictions"
        clean = {role: ctx.eval_scores[role][rows].argmax(axis=1) == reference for role in ctx.roles}
        step = config.pgd_step if config.pgd_step is not None else 2.5 / config.pgd_steps
        result = Robustness(ctx.roles[0], getattr(model, "via", "unknown"), reference_name, len(idx), (float(low), float(high)),
                            config.pgd_steps, f"{step:.3g}·ε", {r: float(c.mean()) for r, c in clean.items()})
        craft = batched(gradient)
        rng = np.random.default_rng(config.seed)
        layouts = ctx.dataset.layouts
        for fraction in config.epsilons:
            epsilon = fraction * (high - low)
            attacks = {
                "fgsm": fgsm(craft, x, reference, epsilon, low, high),
                "pgd": pgd(craft, x, reference, epsilon, step * epsilon, config.pgd_steps, low, high, rng),
            }
            for name, adversarial in attacks.items():
                predicted = {role: _labels(ctx.runners, role, layouts, adversarial) for role in ctx.roles}
                success = {role: float(((predicted[role] != reference) & clean[role]).sum() / max(clean[role].sum(), 1))
                           for role in ctx.roles}
                accuracy = {role: float((predicted[role] == reference).mean()) for role in ctx.roles}
                result.points.append(AttackPoint(name, round(float(epsilon), 6), success, accuracy))
    if "repaired" in ctx.roles:
        result.flags = [flag for role in ctx.roles if role != "repaired" for flag in less_robust(result, "repaired", role)]
    return result


def less_robust(result: Robustness, role: str, baseline: str) -> list[str]:
    """Points where `role`'s accuracy under attack falls clearly below `baseline`'s (by more than 5
    points and two standard errors of the difference). Accuracy under attack, not success rate:
    a broken baseline that is rarely right has few samples to lose and must not look robust."""
    flags = []
    for point in result.points:
        if role not in point.accuracy or baseline not in point.accuracy:
            continue
        a, b = point.accuracy[role], point.accuracy[baseline]
        margin = max(0.05, 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / max(result.n, 1)))
        if b - a > margin:
            flags.append(f"{role} is less robust than {baseline} under {point.attack} ε={point.epsilon:g}: "
                         f"accuracy under attack {a:.0%} vs {b:.0%}")
    return flags
