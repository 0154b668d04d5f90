"""Particle swarm search of a small weight patch, every particle evaluated at once.

Only the localized weights change, so a particle's logits are the cached base logits plus the
contribution of its weight deltas: Z_p = Z + (X[:, cols] ⊙ Δ_p) · R, with R the one-hot map of
each weight to its output row. The whole swarm is one batched tensor operation over the cache
(torch; CUDA when present) — never a forward pass per particle.

PSO as in Arachne v1 / NeuRecover's re-implementation: φ = φ1 + φ2 = 4.1, constriction
χ = 2 / (φ − 2 + √(φ² − 4φ)) ≈ 0.7298, particles drawn from N(mean, std) of the layer's weights,
zero initial velocity, velocity clamped to the layer's weight range, early stop after 10
iterations without improvement, plus a wall-clock budget. The optimiser is a plugin point:
`OPTIMISERS` also holds Arachne TOSEM's differential evolution (DE/rand/1/bin).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from convrepair.events import track


@dataclass
class SearchConfig:
    particles: int = 100
    iterations: int = 100
    patience: int = 10
    alpha: float = 1.0  # weight of keeping positives in the fitness
    budget_seconds: float = 60.0
    seed: int = 0
    device: str = "auto"


@dataclass
class SearchResult:
    values: np.ndarray  # best values of the localized weights
    fitness: float
    iterations: int
    evaluations: int
    seconds: float
    device: str
    history: list[float] = field(default_factory=list)


def on_grid(logits: np.ndarray, quantizer: tuple[float, float, int, int]) -> np.ndarray:
    """Float logits as a QuantizeLinear → DequantizeLinear pair (scale, zero, qmin, qmax) outputs
    them: rounded to its grid and clamped to its range."""
    scale, zero, qmin, qmax = quantizer
    return (np.clip(np.round(logits / np.float32(scale)) + zero, qmin, qmax) - zero) * np.float32(scale)


class SwarmEvaluator:
    """Fitness of many candidate weight vectors at once over cached activations."""

    def __init__(self, inputs, base, wanted, negatives, positives, positions, original, alpha=1.0, device="auto", quantizer=None,
                 output_quantizer=None):
        import torch

        self.torch = torch
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        t = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)  # noqa: E731
        rows = np.array([r for r, _ in positions])
        cols = np.array([c for _, c in positions])
        x_cols = np.asarray(inputs)[:, cols]
        self.x_cols = t(x_cols)  # (N, K)
        self.base = t(base)  # (N, C)
        self.route = t(np.eye(base.shape[1])[rows])  # (K, C)
        self.original = t(original)
        self.alpha = alpha
        # (scale, zero, qmin, qmax) per weight, to evaluate only what int8 can hold
        self.quantizer = None if quantizer is None else tuple(t(v) for v in quantizer)
        # (scale, zero, qmin, qmax) of the logits themselves (a QDQ pair after the layer): `base` is
        # then the float logits before it, and every candidate's logits are rounded and clamped
        self.output_quantizer = None if output_quantizer is None else tuple(float(v) for v in output_quantizer)
        self._fitness_cache(x_cols, np.asarray(base, dtype=np.float64), np.asarray(wanted), rows,
                            np.asarray(negatives), np.asarray(positives), t)

    def _fitness_cache(self, x_cols, base, wanted, rows, negatives, positives, t) -> None:
        """What `fitness` needs, computed once. A patch only moves the logits of the classes its
        weights feed (`changed`); the others' log-sum-exp part (`fixed_sum`, shifted by
        `fixed_max`) and best label are constants. Samples are reordered negatives first."""
        torch = self.torch
        used = np.concatenate([negatives, positives]).astype(np.int64)
        self.n_neg, self.n_pos = len(negatives), len(positives)
        base, wanted = base[used], wanted[used].astype(np.int64)
        changed = np.unique(rows)
        fixed = np.setdiff1d(np.arange(base.shape[1]), changed)
        self.f_x = t(x_cols[used])  # (M, K)
        self.f_route = t(np.eye(len(changed))[np.searchsorted(changed, rows)])  # (K, R)
        self.f_base = t(base[:, changed])  # (M, R)
        if len(fixed):
            fixed_logits = self._quantized_logits(base[:, fixed])
            fixed_max = fixed_logits.max(axis=1)
            self.f_fixed_max = t(fixed_max)
            self.f_fixed_sum = t(np.exp(fixed_logits - fixed_max[:, None]).sum(axis=1))
            fixed_class = fixed[fixed_logits.argmax(axis=1)]
        else:
            self.f_fixed_max, self.f_fixed_sum = t(np.full(len(used), -1e30)), t(np.zeros(len(used)))
            fixed_class = np.full(len(used), base.shape[1])  # never the label, and loses every tie
        self.f_fixed_class = torch.as_tensor(fixed_class, device=self.device)
        self.f_changed = torch.as_tensor(changed, device=self.device)
        self.f_wanted = torch.as_tensor(wanted, device=self.device)
        slot = np.clip(np.searchsorted(changed, wanted), 0, len(changed) - 1)
        in_changed = changed[slot] == wanted
        self.f_slot_safe = torch.as_tensor(np.where(in_changed, slot, 0), device=self.device)
        self.f_in_changed = torch.as_tensor(in_changed, device=self.device)
        self.f_base_wanted = t(self._quantized_logits(base[np.arange(len(used)), wanted]))

    def _quantized_logits(self, logits):
        """Logits as the model outputs them: on the QDQ pair's grid when it has one (numpy or torch)."""
        if self.output_quantizer is None:
            return logits
        if isinstance(logits, np.ndarray):
            return on_grid(logits, self.output_quantizer)
        scale, zero, qmin, qmax = self.output_quantizer
        return (logits / scale).round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)  # in place: one copy

    def fake_quant(self, values):
        if self.quantizer is None:
            return values
        torch = self.torch
        scale, zero, qmin, qmax = self.quantizer
        return (torch.clamp(torch.round(values / scale) + zero, qmin, qmax) - zero) * scale

    def logits(self, values):
        """(P, N, C) logits for P candidate vectors (P, K): Z + X_cols · (Δ_p ⊙ R), one batched GEMM."""
        torch = self.torch
        delta = self.fake_quant(values) - self.original  # (P, K)
        p = delta.shape[0]
        n, k = self.x_cols.shape
        return self._quantized_logits(
            torch.baddbmm(self.base.expand(p, n, -1), self.x_cols.expand(p, n, k), delta[:, :, None] * self.route[None]))

    def fitness(self, values) -> "np.ndarray":
        """Arachne's fitness of P candidate vectors (P, K) at once: one GEMM over the cache for the
        changed classes, then the constant part of every sample's log-sum-exp added back."""
        torch = self.torch
        with torch.no_grad():
            values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
            delta = self.fake_quant(values) - self.original  # (P, K)
            p, (m, k), r = delta.shape[0], self.f_x.shape, self.f_route.shape[1]
            # layout (M, R, P): reductions over the few changed classes run along contiguous particles
            weights = (self.f_route[:, :, None] * delta.t()[:, None, :]).reshape(k, r * p)  # (K, R·P)
            z = self._quantized_logits((self.f_x @ weights).view(m, r, p) + self.f_base[:, :, None])  # (M, R, P) changed logits
            top = z.amax(dim=1)  # (M, P)
            arg = (z == top[:, None, :]).float().argmax(dim=1)  # the first of tied classes (quantized logits tie often)
            shift = torch.maximum(top, self.f_fixed_max[:, None])
            total = torch.exp(z - shift[:, None, :]).sum(dim=1) + self.f_fixed_sum[:, None] * torch.exp(self.f_fixed_max[:, None] - shift)
            lse = shift + torch.log(total)
            z_wanted = torch.where(self.f_in_changed[:, None],
                                   z.gather(1, self.f_slot_safe[:, None, None].expand(m, 1, p)).squeeze(1),
                                   self.f_base_wanted[:, None])
            nll = lse - z_wanted  # (M, P)
            # the predicted label, ties to the lower class index as argmax over every class would
            changed_class, fixed_class, fixed_max = self.f_changed[arg], self.f_fixed_class[:, None], self.f_fixed_max[:, None]
            label = torch.where(top > fixed_max, changed_class,
                                torch.where(top < fixed_max, fixed_class, torch.minimum(changed_class, fixed_class)))
            correct = (label == self.f_wanted[:, None]).float()
            score = torch.zeros(p, device=self.device)
            for part, weight in ((slice(0, self.n_neg), 1.0), (slice(self.n_neg, m), self.alpha)):
                if part.stop > part.start:
                    score = score + weight * (correct[part].mean(dim=0) + 1) / (nll[part].mean(dim=0) + 1)
            return score.cpu().numpy()


def pso(evaluate: Callable[[np.ndarray], np.ndarray], start: np.ndarray, layer_stats: tuple[float, float, float, float], config: SearchConfig) -> SearchResult:
    mean, std, low, high = layer_stats
    rng = np.random.default_rng(config.seed)
    phi1 = phi2 = 2.05
    phi = phi1 + phi2
    chi = 2.0 / (phi - 2.0 + math.sqrt(phi * phi - 4.0 * phi))
    k = len(start)
    position = rng.normal(mean, max(std, 1e-6), size=(config.particles, k)).astype(np.float32)
    position[0] = start  # the unpatched weights are one particle: the search never ends worse
    velocity = np.zeros_like(position)
    v_max = max(high - low, 1e-6)
    started = time.perf_counter()
    fitness = evaluate(position)
    best_position, best_fitness = position.copy(), fitness.copy()
    g = int(np.argmax(best_fitness))
    history, stale, evaluations, iteration = [float(best_fitness[g])], 0, config.particles, 0
    for iteration in track(range(1, config.iterations + 1), "PSO search iterations (at most)"):
        r1, r2 = rng.random((2, config.particles, k), dtype=np.float32)
        velocity = chi * (velocity + phi1 * r1 * (best_position - position) + phi2 * r2 * (best_position[g] - position))
        velocity = np.clip(velocity, -v_max, v_max)
        position = position + velocity
        fitness = evaluate(position)
        evaluations += config.particles
        improved = fitness > best_fitness
        best_position[improved], best_fitness[improved] = position[improved], fitness[improved]
        new_g = int(np.argmax(best_fitness))
        stale = stale + 1 if best_fitness[new_g] <= history[-1] + 1e-9 else 0
        g = new_g
        history.append(float(best_fitness[g]))
        if stale >= config.patience or time.perf_counter() - started > config.budget_seconds:
            break
    return SearchResult(best_position[g].copy(), float(best_fitness[g]), iteration, evaluations,
                        time.perf_counter() - started, "", history)


def differential_evolution(evaluate, start, layer_stats, config: SearchConfig) -> SearchResult:
    """Arachne TOSEM: DE/rand/1/bin, population 100, F ~ U(0.5, 1), CR = 0.7, bounds from the layer."""
    mean, std, low, high = layer_stats
    rng = np.random.default_rng(config.seed)
    k, n = len(start), config.particles
    population = rng.uniform(low, high, size=(n, k)).astype(np.float32)
    population[0] = start
    fitness = evaluate(population)
    started, evaluations, history, stale, generation = time.perf_counter(), n, [float(fitness.max())], 0, 0
    for generation in track(range(1, config.iterations + 1), "DE search generations (at most)"):
        picks = np.array([rng.choice(np.delete(np.arange(n), i), 3, replace=False) for i in range(n)])
        f = rng.uniform(0.5, 1.0, size=(n, 1)).astype(np.float32)
        mutant = np.clip(population[picks[:, 0]] + f * (population[picks[:, 1]] - population[picks[:, 2]]), low, high)
        cross = rng.random((n, k)) < 0.7
        cross[np.arange(n), rng.integers(0, k, n)] = True
        trial = np.where(cross, mutant, population)
        trial_fitness = evaluate(trial)
        evaluations += n
        better = trial_fitness > fitness
        population[better], fitness[better] = trial[better], trial_fitness[better]
        stale = stale + 1 if fitness.max() <= history[-1] + 1e-9 else 0
        history.append(float(fitness.max()))
        if stale >= config.patience or time.perf_counter() - started > config.budget_seconds:
            break
    best = int(np.argmax(fitness))
    return SearchResult(population[best].copy(), float(fitness[best]), generation, evaluations,
                        time.perf_counter() - started, "", history)


OPTIMISERS: dict[str, Callable] = {"pso": pso, "de": differential_evolution}
