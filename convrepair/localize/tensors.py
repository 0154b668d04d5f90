"""Compare two activations whose layouts may differ: find the axis order that makes them agree.

Rather than assume NCHW↔NHWC, try every permutation of the non-batch axes that makes the shapes
match (onnx2tf searches axis orders the same way) and keep the one with the smallest error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from convrepair.compare import error_percentiles


@dataclass
class TensorDiff:
    max_abs: float
    max_rel: float
    cosine: float
    rel_l2: float  # ||s - t|| / ||s||: the divergence measure the walk thresholds
    permutation: tuple[int, ...] | None  # applied to the source to match the target's layout
    rel_error_percentiles: dict[str, float] | None = None  # per-sample ||s_i - t_i|| / ||s_i||

    def to_json(self) -> dict:
        return {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "rel_l2": self.rel_l2,
            "permutation": list(self.permutation) if self.permutation else None,
            "rel_error_percentiles": self.rel_error_percentiles,
            # as Polygraphy's "minimum required tolerance": either alone would pass every value
            "min_passing_tolerance": {"atol": self.max_abs, "rtol": self.max_rel},
        }


def direct_diff(s: np.ndarray, t: np.ndarray) -> TensorDiff:
    """Two tensors of the same shape compared as they are (one batch of a RunningDiff)."""
    return RunningDiff.aligned(s, t).result()


def layout_permutations(source_shape: tuple, target_shape: tuple) -> list[tuple[int, ...]]:
    """Axis orders (batch axis fixed) that turn `source_shape` into `target_shape`."""
    if len(source_shape) != len(target_shape) or len(source_shape) > 6:
        return []
    rest = range(1, len(source_shape))
    return [
        (0, *perm)
        for perm in itertools.permutations(rest)
        if tuple(source_shape[p] for p in (0, *perm)) == tuple(target_shape)
    ]


def compare_tensors(source: np.ndarray, target: np.ndarray) -> TensorDiff | None:
    """Same shapes: compared as they are. Otherwise the best agreement over layout permutations;
    None when no axis order makes them comparable."""
    if source.shape == target.shape:
        return direct_diff(source, target)
    candidates = layout_permutations(source.shape, target.shape)
    best: TensorDiff | None = None
    for perm in candidates:
        diff = direct_diff(np.transpose(source, perm), target)
        diff.permutation = None if perm == tuple(range(source.ndim)) else perm
        if best is None or diff.rel_l2 < best.rel_l2:
            best = diff
    return best


class RunningDiff:
    """A TensorDiff built a batch of samples at a time, so a walk over every layer never holds more
    than one batch of activations. The axis order is chosen on the first batch (as compare_tensors
    would) and kept; the sums give exactly the metrics of the whole tensor."""

    def __init__(self) -> None:
        self.permutation: tuple[int, ...] | None = None
        self.comparable = True
        self.started = False
        self.max_abs = self.max_rel = 0.0
        self.sums = np.zeros(4)  # Σ(s−t)², Σs², Σt², Σs·t
        self.per_sample: list[np.ndarray] = []

    def add(self, source: np.ndarray, target: np.ndarray) -> None:
        if not self.comparable:
            return
        if not self.started:
            self.started = True
            first = compare_tensors(source, target)
            if first is None:
                self.comparable = False
                return
            self.permutation = first.permutation
        if self.permutation is not None:
            source = np.transpose(source, self.permutation)
        if source.shape != target.shape:  # a later batch that no longer lines up
            self.comparable = False
            return
        self._accumulate(source, target)

    @classmethod
    def aligned(cls, source: np.ndarray, target: np.ndarray) -> RunningDiff:
        """One batch whose axes already line up (no axis order to find)."""
        diff = cls()
        diff.started = True
        diff._accumulate(source, target)
        return diff

    def _accumulate(self, source: np.ndarray, target: np.ndarray) -> None:
        s, t = source.astype(np.float64), target.astype(np.float64)
        delta = np.abs(s - t)
        self.max_abs = max(self.max_abs, float(delta.max(initial=0.0)))
        self.max_rel = max(self.max_rel, float((delta / np.maximum(np.abs(s), 1e-6)).max(initial=0.0)))
        self.sums += [float((delta**2).sum()), float((s**2).sum()), float((t**2).sum()), float((s * t).sum())]
        if s.ndim and len(s):
            s2, d2 = s.reshape(len(s), -1), (s - t).reshape(len(s), -1)
            self.per_sample.append(np.linalg.norm(d2, axis=1) / np.maximum(np.linalg.norm(s2, axis=1), 1e-12))

    def result(self) -> TensorDiff | None:
        if not (self.comparable and self.started):
            return None
        d2, s2, t2, st = self.sums
        norm_s, norm_t = np.sqrt(s2), np.sqrt(t2)
        cosine = float(st / (norm_s * norm_t)) if norm_s > 0 and norm_t > 0 else float(norm_s == norm_t)
        errors = np.concatenate(self.per_sample) if self.per_sample else None
        return TensorDiff(self.max_abs, self.max_rel, cosine, float(np.sqrt(d2) / max(norm_s, 1e-12)), self.permutation,
                          error_percentiles(errors))
