"""Robustness lens: FGSM and PGD (L∞) crafted with the source model's gradients, transferred.

The adversarial inputs are crafted on the source in its own framework (or on the torch module
onnx2torch builds from an ONNX source) and then fed to every model: the source's rate is the
white-box attack success, the others' are transfer success rates of the very same inputs. Inputs
stay inside the ε-ball and the valid input range.

A repaired model is compared with the source (the reference) and with the target. Only a fall
below the source is a flag: a repair that restores the source meets the source's own adversarial
inputs as the source does (white-box), while a broken target meets them only by transfer, so a
repaired model "below the target" but level with the source is the method, not a loss — that
comparison is kept as a note, never as a flag.
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
    flags: list[str] = field(default_factory=list)  # the repaired model clearly below the reference (the source)
    notes: list[str] = field(default_factory=list)  # below another model (the target) but level with the reference
    compared: dict[str, str] = field(default_factory=dict)  # role → "reference" or "compared"; what the flags measure against


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
        result.flags, result.notes = compare_repaired(result, "repaired", ctx.roles[0],
                                                      [r for r in ctx.roles[1:] if r != "repaired"])
        result.compared = {ctx.roles[0]: "reference", **{r: "compared" for r in ctx.roles[1:] if r != "repaired"}}
    return result


def compare_repaired(result: Robustness, role: str, reference: str, others: list[str]) -> tuple[list[str], list[str]]:
    """(flags, notes): a flag where `role` falls clearly below the reference; where it falls below
    another model (the target) but not below the reference, a note saying why that is expected."""
    flags = [f"{flag} (the reference)" for flag in less_robust(result, role, reference)]
    notes = []
    for other in others:
        for point, text in zip(*_below(result, role, other)):
            if point.accuracy.get(reference) is not None and not _clearly_below(result, point, role, reference):
                notes.append(f"{text}, level with {reference} ({point.accuracy[reference]:.0%}): the attacks are crafted on "
                             f"{reference}'s gradients, so a model that matches {reference} meets them white-box and {other} "
                             f"only by transfer; not a loss from the repair")
            elif point.accuracy.get(reference) is not None:
                flags.append(text)
    return flags, notes


def _clearly_below(result: Robustness, point: AttackPoint, role: str, baseline: str) -> bool:
    a, b = point.accuracy[role], point.accuracy[baseline]
    return b - a > max(0.05, 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / max(result.n, 1)))


def _below(result: Robustness, role: str, baseline: str) -> tuple[list[AttackPoint], list[str]]:
    points = [p for p in result.points if role in p.accuracy and baseline in p.accuracy and _clearly_below(result, p, role, baseline)]
    return points, [f"{role} is less robust than {baseline} under {p.attack} ε={p.epsilon:g}: accuracy under attack "
                    f"{p.accuracy[role]:.0%} vs {p.accuracy[baseline]:.0%}" for p in points]


def less_robust(result: Robustness, role: str, baseline: str) -> list[str]:
    """Points where `role`'s accuracy under attack falls clearly below `baseline`'s (by more than 5
    points and two standard errors of the difference). Accuracy under attack, not success rate:
    a broken baseline that is rarely right has few samples to lose and must not look robust."""
    return _below(result, role, baseline)[1]
